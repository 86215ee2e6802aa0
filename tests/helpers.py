"""Shared test utilities: parameter sets, gradient streams, jitted trajectories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamw_jax as aw

SHAPES = {"w": (6, 5), "b": (5,), "scalar": (), "conv": (2, 3, 4)}


def make_params(
    seed: int = 0, shapes: dict[str, tuple[int, ...]] = SHAPES
) -> dict[str, np.ndarray]:
    """Float64 parameters with magnitudes around 1."""
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s) for k, s in shapes.items()}


def gradient_stream(
    params: dict[str, np.ndarray], steps: int, seed: int = 1
) -> list[dict[str, np.ndarray]]:
    """Gradients whose scale drifts over four decades, with exact zeros and sign flips, so every
    regime of the update (|m̂| << eps, >> eps, v̂ from tiny to large) is visited."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        scale = 10.0 ** rng.uniform(-3, 1)
        g = {}
        for k, p in params.items():
            x = rng.normal(size=np.shape(p)) * scale
            x = np.where(rng.uniform(size=np.shape(p)) < 0.1, 0.0, x)
            g[k] = x.astype(np.float32).astype(np.float64)
        out.append(g)
    return out


def run_steps(
    optimizer: optax.GradientTransformation,
    params: Any,
    stacked_grads: Any,
    observe: Callable[[Any, optax.OptState], Any] = lambda params, state: params,
) -> Any:
    """``observe(params, state)`` after each step of ``optimizer`` over the leading axis of
    ``stacked_grads``, stacked; one ``lax.scan``, traceable (call it inside ``jax.jit``)."""

    def step(carry, g):
        p, state = carry
        updates, state = optimizer.update(g, state, p)
        p = aw.apply_updates(p, updates)
        return (p, state), observe(p, state)

    return jax.lax.scan(step, (params, optimizer.init(params)), stacked_grads)[1]


def trajectory(
    optimizer: optax.GradientTransformation,
    params: dict[str, np.ndarray],
    grads: Sequence[dict[str, np.ndarray]],
    dtype=jnp.float32,
) -> list[dict[str, np.ndarray]]:
    """Run ``optimizer`` jitted (one ``lax.scan``) and return the params after each step."""
    p0 = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    stacked = {k: jnp.asarray(np.stack([g[k] for g in grads]), dtype) for k in params}
    history = jax.device_get(jax.jit(lambda p, g: run_steps(optimizer, p, g))(p0, stacked))
    return [{k: np.asarray(history[k][i], np.float64) for k in params} for i in range(len(grads))]


def max_abs_error(a: Sequence[dict[str, np.ndarray]], b: Sequence[dict[str, np.ndarray]]) -> float:
    """Largest absolute difference over every step and leaf of two trajectories."""
    return max(float(np.max(np.abs(x[k] - y[k]), initial=0.0)) for x, y in zip(a, b) for k in x)


def float32_tolerance(reference: Sequence[dict[str, np.ndarray]]) -> float:
    """Allowed distance of a float32 trajectory from the float64 reference.

    Each step rounds θ to float32 (at most ½ ulp of |θ|) and computes the update, a quantity of
    size about η, with a relative error of a few ulps, far below that; the rounding errors are
    independent and zero-mean, so after N steps they grow like √N. We allow 4·√N ulps of the
    largest |θ| seen: ~10x what we measure, and ~100x below the error of any real mistake in the
    formulas (a misplaced eps, an off-by-one step or a float32-rounded β all move θ by > 1e-4).
    """
    steps = len(reference)
    largest = max(float(np.max(np.abs(p[k]), initial=0.0)) for p in reference for k in p)
    return 4.0 * np.sqrt(steps) * float(np.spacing(np.float32(max(largest, 1.0))))
