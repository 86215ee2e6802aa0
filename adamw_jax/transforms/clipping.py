"""Gradient clipping: by value, by each tensor's norm, by the global norm of all tensors.

    clip_by_value:        g ← clip(g, -c, c)                          (optax.clip, Keras clipvalue)
    clip_by_norm:         g ← g · c / max(‖g‖₂, c)        for each tensor alone    (Keras clipnorm)
    clip_by_global_norm:  g ← g · c / max(‖G‖₂ + eps, c)  with ‖G‖₂² = Σ ‖g‖₂²
                          (optax and Keras global_clipnorm with eps=0; torch clip_grad_norm_ with
                          eps=1e-6)

Norms never overflow: they are taken of the gradients divided by a power of two ``a`` near the
largest magnitude (``max|G| / a`` in [1, 4)), ``‖G‖₂ = a · ‖G / a‖₂``, in at least float32, so every
element 1e20 or a thousand elements of 6e17 (whose float32 sum of squares is ``inf``) clip to
the exact answer, and the clipping factor ``c / (‖G / a‖₂ + eps / a) / a`` is formed without
the overflowing ``‖G‖₂`` itself. Division by ``a`` is exact; the cost is one more read of
the gradients (the maximum) before the sum. A gradient that is not clipped is returned bit for
bit. Thresholds: ``c = inf`` never clips, ``c = 0`` zeroes every nonzero gradient (as optax).

Subnormal elements (|g| < 1.2e-38 in float32) count as zero in the norm, as XLA's CPU and GPU
arithmetic flushes them; such gradients are below every threshold and pass through unchanged.
A non-finite element makes every gradient of its norm NaN (all of them for the global norm, as
Keras does), so that ``skip_nonfinite`` sees the bad step instead of a silently rescaled one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import transformation


class ClipState(NamedTuple):
    """Clipping keeps no state."""


def _stateless(
    clip: Callable[[optax.Updates], optax.Updates],
) -> optax.GradientTransformationExtraArgs:
    """A transform whose update is ``clip(updates)`` and whose state is empty."""

    def init_fn(params: optax.Params) -> ClipState:
        del params
        return ClipState()

    def update_fn(
        updates: optax.Updates,
        state: ClipState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ClipState]:
        del params, extra_args
        return clip(updates), state

    return transformation(init_fn, update_fn)


def _check_threshold(name: str, value: Any) -> None:
    check.check_range(
        name,
        value,
        low=0.0,
        hint=f"{name} is the clipping threshold, e.g. 1.0; "
        "inf disables clipping, 0 zeroes every gradient.",
    )


def _compute(g: jax.Array) -> jax.Array:
    return g.astype(num.compute_dtype(g.dtype))


def _max_magnitude(leaves: Sequence[jax.Array]) -> jax.Array:
    """``max |g|`` over every element (real and imaginary parts apart), NaN if any is NaN."""
    parts = [
        jnp.max(jnp.abs(p), initial=0.0).astype(num.hyperparameter_dtype())
        for g in leaves
        for p in ((g.real, g.imag) if jnp.iscomplexobj(g) else (g,))
    ]
    return jnp.max(jnp.stack(parts)) if parts else jnp.zeros([], num.hyperparameter_dtype())


def _power_of_two(exponent: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """``2^exponent`` for an exponent in the normal range, exact (built from its bits)."""
    info = jnp.finfo(dtype)
    uint = jnp.uint64 if dtype == jnp.float64 else jnp.uint32
    biased = (exponent - info.minexp + 1).astype(uint)
    return jax.lax.bitcast_convert_type(biased << info.nmant, dtype)


class _Norm(NamedTuple):
    """``‖G‖₂ = scale · scaled``: ``scale = 2^k`` and ``inverse = 2^-k``, both normal floats,
    ``scaled = ‖G / scale‖₂`` in [0, 4·sqrt(n)]; ``finite``: every element of ``G`` is finite."""

    scale: jax.Array
    inverse: jax.Array
    scaled: jax.Array
    finite: jax.Array


def _norm(leaves: Sequence[jax.Array]) -> _Norm:
    """The norm of ``leaves`` as ``2^k · ‖G / 2^k‖₂`` with ``max|G| / 2^k`` in [1, 4).

    ``k`` is the exponent of ``max|G|`` less one, kept where ``2^-k`` is normal too (XLA turns a
    division by a scalar into a multiplication by its reciprocal, which must not flush to 0).
    """
    largest = _max_magnitude(leaves)
    info = jnp.finfo(largest.dtype)
    _, exponent = jnp.frexp(largest)  # largest = mantissa · 2^exponent, mantissa in [0.5, 1)
    k = jnp.where(
        (largest > 0) & jnp.isfinite(largest),
        jnp.clip(exponent - 1, -info.maxexp + 2, info.maxexp - 2),
        0,
    )
    scale, inverse = _power_of_two(k, largest.dtype), _power_of_two(-k, largest.dtype)
    squares = [jnp.sum(num.squared_magnitude(_compute(g) * inverse)) for g in leaves]
    scaled = jnp.sqrt(sum(squares, jnp.zeros([], largest.dtype)))
    return _Norm(scale, inverse, scaled, jnp.isfinite(largest))


def global_norm(tree: optax.Updates) -> jax.Array:
    """``‖G‖₂``: the L2 norm of all leaves of ``tree`` together, in at least float32, without
    overflow (``inf`` only when the norm itself exceeds the float32 maximum)."""
    norm = _norm(jax.tree_util.tree_leaves(tree))
    return jnp.where(norm.finite, norm.scale * norm.scaled, jnp.nan)


def _clip_to_norm(
    leaves: Sequence[jax.Array],
    bound: jax.Array,
    offset: jax.Array,
) -> list[jax.Array]:
    """The leaves times ``c / (‖G‖₂ + eps)`` where ``‖G‖₂ + eps > c``, else unchanged."""
    norm = _norm(leaves)
    clips = norm.scale * norm.scaled + offset > bound  # an overflowed norm (inf) clips
    scaled_factor = bound / (norm.scaled + offset * norm.inverse)  # c / (‖G‖₂ + eps) times a
    factor = scaled_factor * norm.inverse
    # g · factor keeps the small elements; where the factor itself underflows (‖G‖₂ > c / 1.2e-38)
    # (g / a) · (a · factor) keeps the large ones, and the small ones are below float32 anyway.
    direct = factor >= jnp.finfo(factor.dtype).tiny

    def leaf(g: jax.Array) -> jax.Array:
        x = _compute(g)
        clipped = jnp.where(direct, x * factor, (x * norm.inverse) * scaled_factor).astype(g.dtype)
        return jnp.where(norm.finite, jnp.where(clips, clipped, g), jnp.asarray(jnp.nan, g.dtype))

    return [leaf(g) for g in leaves]


def clip_by_value(max_value: float) -> optax.GradientTransformationExtraArgs:
    """Clip every gradient element to ``[-max_value, max_value]`` (``optax.clip``, Keras
    ``clipvalue``).

    Args:
      max_value: the bound ``c >= 0``; ``inf`` leaves the gradients as they are.
    """
    _check_threshold("max_value", max_value)

    def clip(updates: optax.Updates) -> optax.Updates:
        bound = num.as_hyperparameter(max_value)
        return jax.tree_util.tree_map(
            lambda g: jnp.clip(_compute(g), -bound, bound).astype(g.dtype), updates
        )

    return _stateless(clip)


def clip_by_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """Rescale each gradient tensor on its own so its L2 norm is at most ``max_norm`` (Keras
    ``clipnorm``; ``optax.clip_by_block_rms(c / sqrt(size))``): ``g ← g · c / max(‖g‖₂, c)``.

    Args:
      max_norm: the bound ``c >= 0`` on each tensor's norm; ``inf`` never clips.
    """
    _check_threshold("max_norm", max_norm)

    def clip(updates: optax.Updates) -> optax.Updates:
        bound, offset = num.as_hyperparameter(max_norm), num.as_hyperparameter(0.0)
        return jax.tree_util.tree_map(lambda g: _clip_to_norm([g], bound, offset)[0], updates)

    return _stateless(clip)


def clip_by_global_norm(
    max_norm: float,
    *,
    eps: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Rescale all gradients together so their joint L2 norm is at most ``max_norm``:
    ``g ← g · c / max(‖G‖₂ + eps, c)``.

    ``eps=0`` is ``optax.clip_by_global_norm`` and Keras ``global_clipnorm``; ``eps=1e-6`` is
    ``torch.nn.utils.clip_grad_norm_``, which divides by ``‖G‖₂ + 1e-6``.

    Args:
      max_norm: the bound ``c >= 0`` on the global norm; ``inf`` never clips.
      eps: added to the norm in the denominator, finite and >= 0.
    """
    _check_threshold("max_norm", max_norm)
    check.check_range(
        "eps",
        eps,
        low=0.0,
        high=math.inf,
        high_inclusive=False,
        hint="Use 0.0 (optax, Keras) or 1e-6 (torch).",
    )

    def clip(updates: optax.Updates) -> optax.Updates:
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        bound, offset = num.as_hyperparameter(max_norm), num.as_hyperparameter(eps)
        return treedef.unflatten(_clip_to_norm(leaves, bound, offset))

    return _stateless(clip)
