"""presets: torch_adamw, torch_adam and keras_adamw against the float64 reference, the torch
state_dict conversion, and the argument checks (with the peers' argument names).

The runs against the real torch and Keras are in tests/parity/.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import (
    float32_tolerance,
    gradient_stream,
    make_params,
    max_abs_error,
    run_steps,
    trajectory,
)
from hypothesis import given
from hypothesis import strategies as st
from reference import adamw_trajectory

import adamw_jax as aw

STEPS = 200
PARAMS = make_params(0)
GRADS = gradient_stream(PARAMS, STEPS, seed=1)
TORCH_ALL = dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True, maximize=True)


def test_torch_adamw_is_adamw_under_torch_names():
    expected = adamw_trajectory(
        PARAMS,
        GRADS,
        learning_rate=1e-2,
        b1=0.8,
        b2=0.99,
        eps=1e-6,
        weight_decay=0.1,
        amsgrad=True,
        maximize=True,
    )
    actual = trajectory(aw.presets.torch_adamw(1e-2, **TORCH_ALL), PARAMS, GRADS)
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)
    same_chain = aw.adamw(1e-2, 0.8, 0.99, 1e-6, weight_decay=0.1, amsgrad=True, maximize=True)
    assert max_abs_error(actual, trajectory(same_chain, PARAMS, GRADS)) == 0.0


def test_torch_adam_without_weight_decay_is_adam():
    schedule = aw.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 20, STEPS, 1e-4)
    expected = adamw_trajectory(
        PARAMS, GRADS, learning_rate=lambda t: float(schedule(t)), amsgrad=True, maximize=True
    )
    actual = trajectory(aw.presets.torch_adam(schedule, amsgrad=True, maximize=True), PARAMS, GRADS)
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)


def test_torch_adam_weight_decay_is_l2_on_the_gradient():
    """One step from a zero gradient, by hand: Adam's g = λ·θ, so m̂ = g, v̂ = g² and
    θ₁ = θ - η·λθ/(λ|θ| + ε); AdamW instead shrinks θ by η·λ (its Adam direction is 0/ε = 0)."""
    theta = jnp.array([1.0, -2.0, 0.5, 0.0])
    params, zero = {"w": theta}, {"w": jnp.zeros(4)}
    lr, decay, eps = 0.01, 0.1, 1e-8

    def first_step(optimizer):
        updates, _ = jax.jit(optimizer.update)(zero, optimizer.init(params), params)
        return aw.apply_updates(params, updates)["w"]

    l2 = first_step(aw.presets.torch_adam(lr, eps=eps, weight_decay=decay))
    np.testing.assert_allclose(
        l2, theta - lr * decay * theta / (decay * jnp.abs(theta) + eps), rtol=1e-6
    )
    decoupled = first_step(aw.presets.torch_adamw(lr, eps=eps, weight_decay=decay))
    np.testing.assert_allclose(decoupled, theta * (1 - lr * decay), rtol=1e-7)


def test_keras_adamw_is_epsilon_hat_adamw_with_name_masks():
    expected = adamw_trajectory(
        PARAMS,
        GRADS,
        learning_rate=1e-2,
        b1=0.8,
        b2=0.99,
        eps=1e-3,
        weight_decay=0.2,
        eps_mode="hat",
        amsgrad=True,
        decay_mask={"b": False, "conv": True, "scalar": False, "w": True},
    )
    preset = aw.presets.keras_adamw(
        1e-2, 0.2, 0.8, 0.99, 1e-3, amsgrad=True, exclude_from_weight_decay=["^b$", "scal"]
    )
    actual = trajectory(preset, PARAMS, GRADS)
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)


HYPER_STEPS = 30
HYPER_GRADS = GRADS[:HYPER_STEPS]


@jax.jit
def traced_hyperparameter_runs(hyper):
    """torch_adamw, torch_adam and keras_adamw built from traced hyperparameters: one compilation
    serves every example hypothesis draws."""
    lr, b1, b2, eps, decay = hyper
    optimizers = (
        aw.presets.torch_adamw(lr, (b1, b2), eps, decay),
        aw.presets.torch_adam(lr, (b1, b2), eps),
        aw.presets.keras_adamw(lr, decay, b1, b2, eps),
    )
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    stacked = {k: jnp.asarray(np.stack([g[k] for g in HYPER_GRADS]), jnp.float32) for k in PARAMS}
    return [run_steps(optimizer, params, stacked) for optimizer in optimizers]


def _as_float32(value: float) -> float:
    """The hyperparameter the traced float32 run sees, given to the reference exactly."""
    return float(np.float32(value))


@given(
    lr=st.floats(1e-4, 1e-1),
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.5, 0.9999),
    eps=st.floats(1e-8, 1e-2),
    decay=st.floats(0.0, 0.5),
)
def test_presets_match_reference_for_any_hyperparameters(lr, b1, b2, eps, decay):
    lr, b1, b2, eps, decay = map(_as_float32, (lr, b1, b2, eps, decay))
    runs = jax.device_get(traced_hyperparameter_runs(jnp.array([lr, b1, b2, eps, decay])))
    common = dict(learning_rate=lr, b1=b1, b2=b2, eps=eps)
    references = (
        adamw_trajectory(PARAMS, HYPER_GRADS, weight_decay=decay, **common),
        adamw_trajectory(PARAMS, HYPER_GRADS, **common),
        adamw_trajectory(PARAMS, HYPER_GRADS, weight_decay=decay, eps_mode="hat", **common),
    )
    for run, expected in zip(runs, references):
        actual = [
            {k: np.asarray(run[k][s], np.float64) for k in PARAMS} for s in range(HYPER_STEPS)
        ]
        assert max_abs_error(actual, expected) <= float32_tolerance(expected)


# ---- torch state_dict conversion ------------------------------------------------------------

SHAPES = {"a": (3, 2), "b": (4,), "c": ()}


def torch_state_dict(step: float, amsgrad: bool, dtype: torch.dtype, seed: int = 0) -> dict:
    """A torch AdamW state_dict as torch writes it, filled with random moments."""
    generator = torch.Generator().manual_seed(seed)

    def moment(shape):
        return torch.rand(shape, generator=generator, dtype=torch.float32).to(dtype)

    state = {}
    for index, shape in enumerate(SHAPES.values()):
        state[index] = {
            "step": torch.tensor(float(step)),
            "exp_avg": moment(shape),
            "exp_avg_sq": moment(shape),
        }
        if amsgrad:
            state[index]["max_exp_avg_sq"] = state[index]["exp_avg_sq"] + moment(shape)
    group = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 1e-2,
        "amsgrad": amsgrad,
        "params": list(range(len(SHAPES))),
    }
    return {"state": state, "param_groups": [group]}


def like_state(amsgrad: bool, dtype=jnp.float32):
    params = {k: jnp.zeros(s, dtype) for k, s in SHAPES.items()}
    return aw.presets.torch_adamw(lambda step: 1e-3, amsgrad=amsgrad).init(params)


@given(
    step=st.integers(1, 2**24),
    amsgrad=st.booleans(),
    seed=st.integers(0, 2**16),
    bfloat16=st.booleans(),
)
def test_torch_state_dict_round_trip_is_exact(step, amsgrad, seed, bfloat16):
    torch_dtype, jax_dtype = (
        (torch.bfloat16, jnp.bfloat16) if bfloat16 else (torch.float32, jnp.float32)
    )
    original = torch_state_dict(step, amsgrad, torch_dtype, seed)
    state = aw.presets.from_torch_state_dict(original, like_state(amsgrad, jax_dtype))

    counts = [x for x in jax.tree_util.tree_leaves(state) if x.dtype == jnp.int32]
    assert len(counts) == 3 and all(int(c) == step for c in counts)  # moments, decay, schedule
    back = aw.presets.to_torch_state_dict(state, original)
    assert back["param_groups"] == original["param_groups"]
    for index, entry in original["state"].items():
        assert set(back["state"][index]) == set(entry)
        for name, tensor in entry.items():
            assert back["state"][index][name].dtype == tensor.dtype
            assert torch.equal(back["state"][index][name], tensor)


def test_fresh_torch_optimizer_gives_the_fresh_state():
    fresh = {"state": {}, "param_groups": torch_state_dict(1, False, torch.float32)["param_groups"]}
    like = like_state(False)
    converted = aw.presets.from_torch_state_dict(fresh, like)
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), converted, like)
    )


def _mismatched(change: str) -> dict:
    state_dict = torch_state_dict(5, False, torch.float32)
    if change == "shape":
        state_dict["state"][1]["exp_avg"] = torch.zeros(5)
    elif change == "steps":
        state_dict["state"][2]["step"] = torch.tensor(4.0)
    elif change == "missing":
        del state_dict["state"][0]
    elif change == "count":
        state_dict["param_groups"][0]["params"].append(3)
    return state_dict


@pytest.mark.parametrize(
    "change, words",
    [
        ("shape", "shape"),
        ("steps", "different steps"),
        ("missing", "no state"),
        ("count", "leaves"),
    ],
)
def test_mismatched_torch_state_is_named(change, words):
    with pytest.raises(ValueError, match=words):
        aw.presets.from_torch_state_dict(_mismatched(change), like_state(False))


def test_amsgrad_mismatch_is_named_both_ways():
    with pytest.raises(ValueError, match="amsgrad=True"):
        aw.presets.from_torch_state_dict(
            torch_state_dict(5, True, torch.float32), like_state(False)
        )
    with pytest.raises(ValueError, match="amsgrad"):
        aw.presets.to_torch_state_dict(like_state(False), torch_state_dict(5, True, torch.float32))
    with pytest.raises(ValueError, match="scale_by_adam"):
        aw.presets.to_torch_state_dict((), torch_state_dict(5, False, torch.float32))


# ---- argument checks ------------------------------------------------------------------------


@pytest.mark.parametrize("preset", [aw.presets.torch_adamw, aw.presets.torch_adam])
@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(lr=-1e-3), ValueError, "lr"),
        (dict(lr="1e-3"), TypeError, "lr"),
        (dict(betas=0.9), TypeError, "betas"),
        (dict(betas=(0.9, 0.99, 0.999)), TypeError, "betas"),
        (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
        (dict(betas=(-0.1, 0.999)), ValueError, r"betas\[0\]"),
        (dict(eps=-1e-8), ValueError, "eps"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    ],
)
def test_torch_preset_arguments_are_checked_when_built(preset, kwargs, error, words):
    with pytest.raises(error, match=words):
        preset(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(clipnorm=1.0, global_clipnorm=1.0), ValueError, "Only one of clipnorm"),
        (dict(clipvalue=0.5, clipnorm=1.0), ValueError, "clipvalue=0.5"),
        (dict(clipnorm=0.0), ValueError, "clipnorm must be > 0"),
        (dict(global_clipnorm=-1.0), ValueError, "global_clipnorm"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate"),
        (dict(weight_decay=None), TypeError, "weight_decay"),
        (dict(beta_1=1.0), ValueError, "beta_1"),
        (dict(beta_2=[0.999]), TypeError, "beta_2"),
        (dict(epsilon=-1e-7), ValueError, "epsilon"),
        (dict(use_ema=True, ema_momentum=1.5), ValueError, "ema_momentum"),
        (dict(use_ema=True, ema_overwrite_frequency=0), ValueError, "ema_overwrite_frequency"),
        (dict(gradient_accumulation_steps=2.0), TypeError, "gradient_accumulation_steps"),
        (dict(loss_scale_factor=0.0), ValueError, "loss_scale_factor"),
        (dict(exclude_from_weight_decay="bias"), TypeError, "list"),
    ],
)
def test_keras_preset_arguments_are_checked_under_keras_names(kwargs, error, words):
    with pytest.raises(error, match=words):
        aw.presets.keras_adamw(**kwargs)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda v: aw.presets.torch_adamw(amsgrad=v), "amsgrad"),
        (lambda v: aw.presets.torch_adamw(maximize=v), "maximize"),
        (lambda v: aw.presets.torch_adam(amsgrad=v), "amsgrad"),
        (lambda v: aw.presets.torch_adam(maximize=v), "maximize"),
        (lambda v: aw.presets.keras_adamw(amsgrad=v), "amsgrad"),
        (lambda v: aw.presets.keras_adamw(use_ema=v), "use_ema"),
    ],
)
@pytest.mark.parametrize("value", ["no", "False", 1])
def test_preset_flags_must_be_bools(build, name, value):
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        build(value)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda v: aw.presets.torch_adamw(lr=v), "lr"),
        (lambda v: aw.presets.torch_adamw(eps=v), "eps"),
        (lambda v: aw.presets.torch_adamw(weight_decay=v), "weight_decay"),
        (lambda v: aw.presets.torch_adam(lr=v), "lr"),
        (lambda v: aw.presets.torch_adam(weight_decay=v), "weight_decay"),
        (lambda v: aw.presets.keras_adamw(learning_rate=v), "learning_rate"),
        (lambda v: aw.presets.keras_adamw(weight_decay=v), "weight_decay"),
        (lambda v: aw.presets.keras_adamw(epsilon=v), "epsilon"),
        (lambda v: aw.presets.keras_adamw(loss_scale_factor=v), "loss_scale_factor"),
    ],
)
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_preset_infinite_and_nan_hyperparameters_are_refused(build, name, value):
    with pytest.raises(ValueError, match=name):
        build(value)
