"""Run a real Keras 3 optimizer (JAX backend) on a gradient stream, jitted via stateless_apply."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from collections.abc import Sequence  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402


def keras_trajectory(
    optimizer: keras.optimizers.Optimizer,
    params: dict[str, np.ndarray],
    grads: Sequence[dict[str, np.ndarray]],
) -> list[dict[str, np.ndarray]]:
    """The float32 variables after each ``optimizer.apply`` on ``grads``, as float64 dicts."""
    names = list(params)
    variables = [keras.Variable(np.float32(params[k]), name=k) for k in names]
    optimizer.build(variables)
    step = jax.jit(optimizer.stateless_apply)
    values = [v.value for v in variables]
    state = [v.value for v in optimizer.variables]
    out = []
    for g in grads:
        values, state = step(state, [jnp.asarray(g[k], jnp.float32) for k in names], values)
        out.append({k: np.asarray(v, np.float64) for k, v in zip(names, values)})
    return out
