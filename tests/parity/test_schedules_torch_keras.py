"""Schedules and reduce_on_plateau against the real torch lr_scheduler and Keras schedules, run
live on the same steps; b1 cycled as torch OneCycleLR(cycle_momentum=True) on torch AdamW."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory  # noqa: E402

import adamw_jax as aw  # noqa: E402

S = aw.schedules
STEPS = 300
LR = 0.1


def torch_rates(make_scheduler, steps: int = STEPS) -> np.ndarray:
    """The learning rate torch uses at each 0-based step (its values are Python float64)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = make_scheduler(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(rates)


def ours(schedule, steps: int = STEPS) -> np.ndarray:
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(steps)), np.float64)


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Ours is float32 (a few ulps, 1.2e-7 relative each); torch's chained float64 updates and
    Keras's float32 add a few more. 2e-6 relative, with a floor of 16 ulps of the largest value
    for curves that reach 0, is an order above both and far below any one-step shift."""
    np.testing.assert_allclose(
        actual,
        expected,
        rtol=2e-6,
        atol=16 * float(np.finfo(np.float32).eps) * float(np.max(np.abs(expected))),
    )


lr_scheduler = torch.optim.lr_scheduler
TORCH = {
    "StepLR": (lambda o: lr_scheduler.StepLR(o, 40, 0.5), S.step_decay_schedule(LR, 0.5, 40)),
    "MultiStepLR": (
        lambda o: lr_scheduler.MultiStepLR(o, [50, 120, 200], 0.2),
        S.piecewise_constant_schedule(LR, {50: 0.2, 120: 0.2, 200: 0.2}),
    ),
    "ExponentialLR": (
        lambda o: lr_scheduler.ExponentialLR(o, 0.99),
        S.exponential_decay(LR, 1, 0.99),
    ),
    "CosineAnnealingLR": (
        lambda o: lr_scheduler.CosineAnnealingLR(o, STEPS, 1e-4),
        S.cosine_decay_schedule(LR, STEPS, 1e-4 / LR),
    ),
    "CosineAnnealingWarmRestarts": (
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 20, 2, 1e-3),
        S.sgdr_schedule(
            [
                dict(
                    init_value=LR,
                    peak_value=LR,
                    warmup_steps=0,
                    decay_steps=20 * 2**i,
                    end_value=1e-3,
                )
                for i in range(4)
            ]
        ),
    ),
    "OneCycleLR": (
        lambda o: lr_scheduler.OneCycleLR(o, LR, total_steps=STEPS, pct_start=0.3),
        S.cosine_onecycle_schedule(STEPS - 1, LR, 0.3),
    ),
    "OneCycleLR_linear_three_phase": (
        lambda o: lr_scheduler.OneCycleLR(
            o,
            LR,
            total_steps=STEPS,
            pct_start=0.25,
            anneal_strategy="linear",
            three_phase=True,
            div_factor=10.0,
            final_div_factor=100.0,
        ),
        S.linear_onecycle_schedule(STEPS - 1, LR, 0.25, 0.495, 10.0, 100.0),
    ),  # ⌊0.495·299⌋ = 148
    "PolynomialLR": (
        lambda o: lr_scheduler.PolynomialLR(o, 250, 2.0),
        S.polynomial_schedule(LR, 0.0, 2.0, 250),
    ),
    "LinearLR": (
        lambda o: lr_scheduler.LinearLR(o, 0.1, 1.0, 30),
        S.linear_schedule(0.1 * LR, LR, 30),
    ),
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_schedule_matches_torch_lr_scheduler(name):
    make_scheduler, schedule = TORCH[name]
    assert_close(ours(schedule), torch_rates(make_scheduler))


schedules = keras.optimizers.schedules
KERAS = {
    "ExponentialDecay": (schedules.ExponentialDecay(LR, 30, 0.6), S.exponential_decay(LR, 30, 0.6)),
    "ExponentialDecay_staircase": (
        schedules.ExponentialDecay(LR, 30, 0.6, staircase=True),
        S.exponential_decay(LR, 30, 0.6, staircase=True),
    ),
    "InverseTimeDecay": (
        schedules.InverseTimeDecay(LR, 25, 0.5),
        S.inverse_time_decay_schedule(LR, 0.5, 25),
    ),
    "InverseTimeDecay_staircase": (
        schedules.InverseTimeDecay(LR, 25, 0.5, staircase=True),
        S.inverse_time_decay_schedule(LR, 0.5, 25, staircase=True),
    ),
    # Keras's boundaries close each piece on the right: value i up to and including b_i.
    "PiecewiseConstantDecay": (
        schedules.PiecewiseConstantDecay([60, 150], [LR, 0.3 * LR, 0.05 * LR]),
        S.piecewise_constant_schedule(LR, {61: 0.3, 151: 0.05 / 0.3}),
    ),
    "CosineDecay_warmup": (
        schedules.CosineDecay(0.0, 200, alpha=0.05, warmup_target=LR, warmup_steps=40),
        S.warmup_cosine_decay_schedule(0.0, LR, 40, 240, 0.05 * LR),
    ),
    "CosineDecayRestarts": (
        schedules.CosineDecayRestarts(LR, 30, t_mul=2.0, m_mul=0.5, alpha=0.1),
        S.sgdr_schedule(
            [
                dict(
                    init_value=p,
                    peak_value=p,
                    warmup_steps=0,
                    decay_steps=30 * 2**i,
                    end_value=0.1 * LR,
                )
                for i, p in enumerate(LR * (0.9 * 0.5**i + 0.1) for i in range(4))
            ]
        ),
    ),
    "PolynomialDecay": (
        schedules.PolynomialDecay(LR, 200, 1e-3, power=0.5),
        S.polynomial_schedule(LR, 1e-3, 0.5, 200),
    ),
}


@pytest.mark.parametrize("name", sorted(KERAS))
def test_schedule_matches_keras(name):
    keras_schedule, schedule = KERAS[name]
    expected = np.array([float(keras_schedule(step)) for step in range(0, STEPS, 3)])
    assert_close(ours(schedule)[::3], expected)


def test_b1_schedule_matches_torch_onecycle_cycle_momentum():
    """torch OneCycleLR(cycle_momentum=True) on AdamW moves betas[0] inversely to the lr; torch
    bias-corrects with the current beta1 (1 - β1_t^t), as scale_by_adam does with a b1 schedule."""
    steps, params = 100, make_params(5)
    grads = gradient_stream(params, steps, seed=6)
    names = sorted(params)
    tensors = [torch.tensor(params[k], dtype=torch.float64, requires_grad=True) for k in names]
    optimizer = torch.optim.AdamW(tensors, lr=1e-2, betas=(0.95, 0.999), weight_decay=0.05)
    scheduler = lr_scheduler.OneCycleLR(
        optimizer, 1e-2, total_steps=steps, pct_start=0.3, base_momentum=0.85, max_momentum=0.95
    )
    expected = []
    for grad in grads:
        for tensor, k in zip(tensors, names):
            tensor.grad = torch.tensor(grad[k], dtype=torch.float64)
        optimizer.step()
        scheduler.step()
        expected.append({k: t.detach().numpy().copy() for k, t in zip(names, tensors)})
    momentum = S.piecewise_interpolate_schedule("cosine", 0.95, {29: 0.85 / 0.95, 99: 0.95 / 0.85})
    ours_adamw = aw.adamw(
        S.cosine_onecycle_schedule(steps - 1, 1e-2, 0.3), b1=momentum, weight_decay=0.05
    )
    assert max_abs_error(trajectory(ours_adamw, params, grads), expected) <= float32_tolerance(
        expected
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(factor=0.5, patience=3, threshold=1e-4, threshold_mode="rel", cooldown=0, min_lr=0.0),
        dict(factor=0.1, patience=0, threshold=0.05, threshold_mode="abs", cooldown=2, min_lr=1e-4),
        dict(
            factor=0.3,
            patience=5,
            threshold=1e-2,
            threshold_mode="rel",
            cooldown=1,
            min_lr=0.0,
            eps=1e-3,
        ),
    ],
)
def test_reduce_on_plateau_matches_torch(options):
    rng = np.random.default_rng(7)
    losses = np.round(np.maximum(3.0 - np.cumsum(rng.uniform(-0.05, 0.1, 200)), 0.5) * 256) / 256
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", **options)
    expected = []
    for loss in losses:
        optimizer.step()
        scheduler.step(float(loss))
        expected.append(optimizer.param_groups[0]["lr"] / LR)
    relative = options["threshold_mode"] == "rel"
    transform = aw.reduce_on_plateau(
        factor=options["factor"],
        patience=options["patience"],
        cooldown=options["cooldown"],
        rtol=options["threshold"] if relative else 0.0,
        atol=0.0 if relative else options["threshold"],
        min_scale=options["min_lr"] / LR,
        eps=options.get("eps", 1e-8) / LR,
    )
    params = {"w": jnp.ones(1)}
    update = jax.jit(lambda s, v: transform.update(params, s, params, value=v))
    state, scales = transform.init(params), []
    for loss in losses:
        _, state = update(state, jnp.float32(loss))
        scales.append(float(state.scale))
    assert min(expected) < 0.1  # the sequence does plateau, several times
    np.testing.assert_allclose(scales, expected, rtol=1e-6)
