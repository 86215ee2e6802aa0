"""presets.torch_adamw / torch_adam against the real torch.optim.AdamW / Adam (torch 2.13 CPU).

Torch runs the same gradient streams twice: in float64, the oracle of torch's own semantics, and
in float32. The adamw_jax float32 trajectory must stay within ``float32_tolerance`` of torch's
float64 one for all 200 steps, and so must torch's float32 one (the tolerance is one torch itself
meets); by the triangle inequality the two float32 runs are within twice that of each other.
Measured: adamw_jax at 0.07 to 0.19 of the tolerance; torch's float32 AdamW at up to 0.81, because
it multiplies θ by ``1 - η·λ`` rounded to float32 (an error of ~3e-8·|θ| per step, all of one
sign), where adamw_jax adds ``λ·θ`` to the direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
import optax
import pytest
import torch
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory

import adamw_jax as aw

STEPS = 200
PARAMS = make_params(0)
GRADS = gradient_stream(PARAMS, STEPS, seed=1)
KEYS = sorted(PARAMS)  # the order of jax.tree_util.tree_leaves on a dict: torch's param order
LR = 1e-2


lr_factor = aw.schedules.warmup_cosine_decay_schedule(0.0, 1.0, 20, STEPS, 0.01)
# The same float32 values, tabulated for torch's LambdaLR (a function of the 0-based step).
FACTORS = np.asarray(jax.vmap(lr_factor)(np.arange(STEPS + 1)), np.float64)


def make_torch_optimizer(name: str, dtype: torch.dtype, params=PARAMS, **kwargs):
    tensors = [torch.tensor(params[k], dtype=dtype, requires_grad=True) for k in KEYS]
    optimizer = getattr(torch.optim, name)(tensors, **kwargs)
    return tensors, optimizer


def run_torch(tensors, optimizer, grads: Sequence[dict], scheduler=None) -> list[dict]:
    """Step a torch optimizer through ``grads`` and return the params after each step."""
    history = []
    for grad in grads:
        for tensor, key in zip(tensors, KEYS):
            tensor.grad = torch.tensor(grad[key], dtype=tensor.dtype)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        history.append({k: t.detach().double().numpy().copy() for k, t in zip(KEYS, tensors)})
    return history


def torch_trajectory(name: str, dtype: torch.dtype, scheduled: bool, **kwargs) -> list[dict]:
    tensors, optimizer = make_torch_optimizer(name, dtype, lr=LR, **kwargs)
    scheduler = (
        torch.optim.lr_scheduler.LambdaLR(optimizer, FACTORS.__getitem__) if scheduled else None
    )
    return run_torch(tensors, optimizer, GRADS, scheduler)


OPTIONS = {
    "defaults": {},
    "weight_decay": dict(weight_decay=0.1),
    "amsgrad": dict(amsgrad=True),
    "maximize": dict(maximize=True),
    "betas": dict(betas=(0.5, 0.95)),
    "large_eps": dict(eps=1e-3),
    "all": dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True, maximize=True),
}


CASES = [(name, option, False) for name in ("AdamW", "Adam") for option in sorted(OPTIONS)] + [
    (name, option, True) for name in ("AdamW", "Adam") for option in ("defaults", "all")
]


@pytest.mark.parametrize("name, option, scheduled", CASES)
def test_preset_matches_torch(name, option, scheduled):
    kwargs = dict(OPTIONS[option])
    if name == "Adam" and "weight_decay" in kwargs:
        kwargs["weight_decay"] *= 0.1  # L2 on the gradient: keep it a perturbation, not the loss
    expected = torch_trajectory(name, torch.float64, scheduled, **kwargs)
    torch_float32 = torch_trajectory(name, torch.float32, scheduled, **kwargs)
    lr = (lambda step: LR * lr_factor(step)) if scheduled else LR
    preset = aw.presets.torch_adamw if name == "AdamW" else aw.presets.torch_adam
    actual = trajectory(preset(lr, **kwargs), PARAMS, GRADS)

    tolerance = float32_tolerance(expected)
    assert max_abs_error(torch_float32, expected) <= tolerance
    assert max_abs_error(actual, expected) <= tolerance
    assert max_abs_error(actual, torch_float32) <= 2 * tolerance


def test_presets_take_torch_defaults():
    expected = torch_trajectory("AdamW", torch.float64, False)
    tensors, optimizer = make_torch_optimizer("AdamW", torch.float64)
    defaults = run_torch(tensors, optimizer, GRADS)
    actual = trajectory(aw.presets.torch_adamw(), PARAMS, GRADS)
    assert max_abs_error(actual, defaults) <= float32_tolerance(defaults)
    assert max_abs_error(defaults, expected) > 1e-3  # lr=1e-3 differs visibly from LR=1e-2


def float32(tree: dict) -> dict:
    return {k: np.asarray(v, np.float32) for k, v in tree.items()}


def continue_jax(
    optimizer, params: dict, state, grads: Sequence[dict]
) -> tuple[list[dict], object]:
    """Continue an adamw_jax run from float32 ``(params, state)``, one jitted step at a time."""
    step = jax.jit(
        lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*optimizer.update(g, s, p))
    )
    history = []
    for grad in grads:
        params, state = step(params, state, float32(grad))
        history.append({k: np.asarray(v, np.float64) for k, v in params.items()})
    return history, state


HANDOVER = 50  # steps on one side before the run moves to the other, out of 100
PRESETS = {"AdamW": aw.presets.torch_adamw, "Adam": aw.presets.torch_adam}
HANDOVER_RUN = dict(betas=(0.9, 0.99), weight_decay=0.01, amsgrad=True)


def scheduled_torch(name: str, params: dict = PARAMS):
    tensors, optimizer = make_torch_optimizer(name, torch.float32, params, lr=LR, **HANDOVER_RUN)
    return tensors, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, FACTORS.__getitem__)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_torch_run_continued_in_adamw_jax_matches_torch_all_the_way(name):
    grads = GRADS[:100]
    tensors, optimizer, scheduler = scheduled_torch(name)
    torch_all = run_torch(tensors, optimizer, grads, scheduler)

    tensors, optimizer, scheduler = scheduled_torch(name)
    first_half = run_torch(tensors, optimizer, grads[:HANDOVER], scheduler)
    preset = PRESETS[name](lambda step: LR * lr_factor(step), **HANDOVER_RUN)
    params = float32(first_half[-1])
    state = aw.presets.from_torch_state_dict(optimizer.state_dict(), preset.init(params))
    second_half, _ = continue_jax(preset, params, state, grads[HANDOVER:])
    restarted, _ = continue_jax(preset, params, preset.init(params), grads[HANDOVER:])

    tolerance = float32_tolerance(torch_all)
    assert max_abs_error(first_half + second_half, torch_all) <= tolerance
    assert max_abs_error(first_half + restarted, torch_all) > 100 * tolerance  # the state matters


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_adamw_jax_run_continued_in_torch_matches_adamw_jax_all_the_way(name):
    grads = GRADS[:100]
    preset = PRESETS[name](LR, **HANDOVER_RUN)
    params = float32(PARAMS)
    jax_all, _ = continue_jax(preset, params, preset.init(params), grads)

    first_half, state = continue_jax(preset, params, preset.init(params), grads[:HANDOVER])
    tensors, optimizer = make_torch_optimizer(
        name, torch.float32, first_half[-1], lr=LR, **HANDOVER_RUN
    )
    optimizer.load_state_dict(aw.presets.to_torch_state_dict(state, optimizer.state_dict()))
    second_half = run_torch(tensors, optimizer, grads[HANDOVER:])

    tolerance = float32_tolerance(jax_all)
    assert max_abs_error(first_half + second_half, jax_all) <= tolerance
