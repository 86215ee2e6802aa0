"""``aw.schedule_free_adamw`` against the live ``schedulefree.AdamWScheduleFree`` (torch, float64)
and ``optax.contrib.schedule_free_adamw`` (JAX under x64), 200 steps of ``test_torch_parity``'s
gradient stream: the training parameters ``y`` after every step and the evaluation parameters
``x`` (``schedule_free_eval_params``) after every step.

Tolerance: ``helpers.float32_tolerance`` (4·√N ulps of the largest |θ|), the bound plain AdamW
meets against torch. ``x = (y - (1-β1)·z)/β1`` divides two float32 values' difference by β1 =
0.9, an error of a few ulps of |θ| per evaluation, not accumulated, so the same bound holds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import schedulefree
import torch
from helpers import float32_tolerance, max_abs_error

import adamw_jax as aw
from parity.test_torch_parity import GRADS, KEYS, LR, PARAMS


def _schedulefree(**options) -> tuple[list[dict], list[dict]]:
    """``y`` and ``x`` after each step of the float64 reference."""
    tensors = [torch.tensor(PARAMS[k], dtype=torch.float64, requires_grad=True) for k in KEYS]
    optimizer = schedulefree.AdamWScheduleFree(tensors, lr=LR, foreach=False, **options)
    optimizer.train()
    b1 = optimizer.param_groups[0]["betas"][0]
    ys, xs = [], []
    for grad in GRADS:
        for tensor, key in zip(tensors, KEYS):
            tensor.grad = torch.tensor(grad[key], dtype=torch.float64)
        optimizer.step()
        y = {k: t.detach().numpy().copy() for k, t in zip(KEYS, tensors)}
        z = {k: optimizer.state[t]["z"].numpy() for k, t in zip(KEYS, tensors)}
        ys.append(y)
        xs.append({k: (y[k] - (1 - b1) * z[k]) / b1 for k in KEYS})
    return ys, xs


def _ours(
    optimizer, dtype=jnp.float32, eval_params=aw.schedule_free_eval_params
) -> tuple[list[dict], list[dict]]:
    def run(params, grads):
        def step(carry, g):
            p, state = carry
            updates, state = optimizer.update(g, state, p)
            p = optax.apply_updates(p, updates)
            return (p, state), (p, eval_params(state, p))

        return jax.lax.scan(step, (params, optimizer.init(params)), grads)[1]

    p0 = {k: jnp.asarray(v, dtype) for k, v in PARAMS.items()}
    stacked = {k: jnp.asarray(np.stack([g[k] for g in GRADS]), dtype) for k in PARAMS}
    ys, xs = jax.device_get(jax.jit(run)(p0, stacked))

    def unstack(tree):
        return [{k: np.asarray(tree[k][i], np.float64) for k in PARAMS} for i in range(len(GRADS))]

    return unstack(ys), unstack(xs)


def _check(actual, expected):
    for ours, theirs in zip(actual, expected):
        error, tolerance = max_abs_error(ours, theirs), float32_tolerance(theirs)
        assert error <= tolerance, (error, tolerance)


OPTIONS = {
    "defaults": {},
    "warmup_decay": dict(warmup_steps=20, weight_decay=0.1),
    "powers": dict(warmup_steps=5, r=1.0, weight_lr_power=1.0, betas=(0.8, 0.99), eps=1e-6),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_matches_schedulefree(option):
    options = dict(OPTIONS[option])
    b1, b2 = options.pop("betas", (0.9, 0.999))
    expected = _schedulefree(betas=(b1, b2), **options)
    actual = _ours(
        aw.schedule_free_adamw(
            LR, options.pop("warmup_steps", None), b1, b2, options.pop("eps", 1e-8), **options
        )
    )
    _check(actual, expected)


@pytest.mark.parametrize("options", [{}, dict(weight_decay=0.1, b1=0.8, weight_lr_power=1.0)])
def test_matches_optax_contrib_at_a_constant_rate(options):
    """Under warmup optax.contrib differs by design (its averaging weights take the schedule
    one step ahead of its step: see the module docstring); at a constant rate it is the same."""
    with jax.enable_x64(True):
        expected = _ours(
            optax.contrib.schedule_free_adamw(LR, **options),
            jnp.float64,
            optax.contrib.schedule_free_eval_params,
        )
    _check(_ours(aw.schedule_free_adamw(LR, **options)), expected)


def test_state_dtype_and_arguments():
    ys, _ = _ours(aw.schedule_free_adamw(LR, state_dtype=jnp.bfloat16))
    assert np.all(np.isfinite(ys[-1]["w"]))
    state = aw.schedule_free_adamw(LR, state_dtype=jnp.bfloat16).init(
        {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    )
    assert state.z["w"].dtype == jnp.bfloat16
    for kwargs in (
        dict(b1=0.0),
        dict(b1=1.0),
        dict(learning_rate=-1.0),
        dict(warmup_steps=0),
        dict(weight_decay=-0.1),
        dict(eps=float("inf")),
    ):
        with pytest.raises(ValueError):
            aw.schedule_free_adamw(**kwargs)
    with pytest.raises(TypeError, match="warmup_steps"):
        aw.schedule_free_adamw(warmup_steps=2.5)
    with pytest.raises(ValueError, match="schedule_free_adamw"):
        params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
        aw.schedule_free_eval_params(aw.adamw(LR).init(params), params)
