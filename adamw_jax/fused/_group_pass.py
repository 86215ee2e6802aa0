"""One group's step of the fused optimizer (see ``adamw_jax.fused``): the per-step scalars, the
elementwise pass in XLA, and the same step as calls of the native CPU kernel.

A group is a set of leaves sharing flat moment buffers. Both passes take the group's decoded
moments and its leaves and return ``(outputs, moments)``: one array per leaf (``u``, or ``θ + u``
with ``write_params``) and the new ``(m, v)`` or ``(m, v, v̄)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamw_jax import _numerics as num
from adamw_jax import lowbit
from adamw_jax.fused import native
from adamw_jax.fused._flat_layout import LeafSlot, explicit_sharding, pack_slots


class StepScalars(NamedTuple):
    """The per-step scalars, formed once per step by ``adamw_jax.fused`` (see its docstring);
    the native kernel takes them as a float32 vector in this order."""

    b1: jax.Array
    one_minus_b1: jax.Array
    b2: jax.Array
    one_minus_b2: jax.Array
    inverse_c2: jax.Array
    eps: jax.Array
    eps_root: jax.Array
    step_size: jax.Array  # η, or a = η·sqrt(c2)/c1 ("hat")
    moment_scale: jax.Array  # n = moment_scale·m: 1/c1 ("adam") or 1 ("hat")
    nesterov_m: jax.Array  # β1/c1'
    nesterov_g: jax.Array  # (1-β1)/c1
    decay: jax.Array  # k


class GroupOptions(NamedTuple):
    """What one group's pass does besides the shared scalars."""

    amsgrad: bool
    nesterov: bool
    maximize: bool
    decayed: bool
    write_params: bool  # output θ + u instead of u


LEAVES_PER_CALL = 128
"""Leaves per native call: XLA's alias analysis grows with the square of one instruction's
aliased operands (one call over 2000 leaves compiles in 46 s; 128 per call in 1.5 s), and a call
of 128 leaves is still long enough that its launch cost does not show."""


def clamped_gradient(g: jax.Array, o: GroupOptions) -> jax.Array:
    """``clamp(±g)``: negated to maximize, clamped so that nothing overflows."""
    return num.limit_magnitude(-g if o.maximize else g)


def moment_pass(
    g: jax.Array, m: jax.Array, v: jax.Array, v_max: jax.Array | None, s: StepScalars
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """The new ``(m, v, v_max)`` from the clamped gradient ``g``."""
    m = s.b1 * m + s.one_minus_b1 * g
    v = s.b2 * v + s.one_minus_b2 * num.squared_magnitude(g)
    return m, v, None if v_max is None else jnp.maximum(v_max, v)


def update_from_moments(
    g: jax.Array,
    m: jax.Array,
    second: jax.Array,
    p: jax.Array | None,
    s: StepScalars,
    o: GroupOptions,
) -> jax.Array:
    """``u`` from the clamped gradient, the new ``m`` and second moment (``v`` or ``v̄``)."""
    numerator = s.nesterov_m * m + s.nesterov_g * g if o.nesterov else s.moment_scale * m
    denominator = jnp.sqrt(second * s.inverse_c2 + s.eps_root) + s.eps
    update = -s.step_size * num.adam_ratio(numerator, denominator)
    if not o.decayed:
        return update
    assert p is not None, "a decayed group passes its parameters"
    return update - s.decay * p


def elementwise_pass(
    g: jax.Array,
    m: jax.Array,
    v: jax.Array,
    v_max: jax.Array | None,
    p: jax.Array | None,
    s: StepScalars,
    o: GroupOptions,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """One elementwise pass over a group's flat buffers: ``(update, m, v, v_max)``."""
    g = clamped_gradient(g, o)
    m, v, v_max = moment_pass(g, m, v, v_max, s)
    return update_from_moments(g, m, v if v_max is None else v_max, p, s, o), m, v, v_max


def xla_group_pass(
    scalars: StepScalars,
    moments: tuple[jax.Array, ...],
    params: list[jax.Array] | None,
    grads: list[jax.Array],
    slots: list[LeafSlot],
    o: GroupOptions,
) -> tuple[list[jax.Array], tuple[jax.Array, ...]]:
    """One group's step in XLA: ``(outputs, moments)``, one array per leaf (``u``, or ``θ + u``
    with ``write_params``) and the new ``(m, v)`` or ``(m, v, v̄)``. ``moments`` are the decoded
    buffers; the leaves are packed into their layout for one elementwise pass and the update is
    sliced back per leaf. ``params`` may be None when neither decayed nor written."""
    shape, dtype = moments[0].shape, num.compute_dtype(slots[0].dtype)
    # A leaf alone in its buffer (of its shape) is used as it is: no ravel, no slice, so a leaf
    # sharded along Explicit mesh axes keeps its sharding through the pass.
    alone = len(slots) == 1 and slots[0].shape == shape

    def pack(leaves: list[jax.Array], as_dtype: Any) -> jax.Array:
        if alone:
            return jnp.asarray(leaves[0]).astype(as_dtype)
        return jnp.reshape(pack_slots(leaves, slots, math.prod(shape), as_dtype), shape)

    assert params is not None or not (o.decayed or o.write_params), "the group needs θ"
    decayed = pack(params, slots[0].dtype) if params is not None and o.decayed else None
    v_max = moments[2] if o.amsgrad else None
    update, m, v, v_max = elementwise_pass(
        pack(grads, dtype), moments[0], moments[1], v_max, decayed, scalars, o
    )
    if alone:
        outputs = [update]
    else:
        flat = jnp.ravel(update)
        outputs = [jnp.reshape(flat[s.offset : s.offset + s.size], s.shape) for s in slots]
    if params is not None and o.write_params:
        outputs = [lowbit.add_and_round(p, u, p.dtype, None) for p, u in zip(params, outputs)]
    new_moments: tuple[jax.Array, ...] = (m, v) if v_max is None else (m, v, v_max)
    return outputs, new_moments


def native_group_pass(
    scalars: StepScalars,
    moments: tuple[Any, ...],
    params: list[jax.Array] | None,
    grads: list[jax.Array],
    slots: list[LeafSlot],
    o: GroupOptions,
    *,
    decode: Callable[[tuple[Any, ...]], tuple[jax.Array, ...]] | None = None,
    encode: Callable[[tuple[jax.Array, ...]], tuple[Any, ...]] | None = None,
    seeds: jax.Array | None = None,
) -> tuple[list[jax.Array], tuple[Any, ...]]:
    """The group's step as calls of the CPU kernel (``adamw_jax.native``), ``LEAVES_PER_CALL``
    leaves each: the arguments and outputs of ``xla_group_pass``, except that ``moments`` are
    the stored buffers (any ``native.FORMATS`` format) and come back stored, rounded with the
    stochastic-rounding ``seeds`` (uint32[3], one per moment) when given. ``decode``/``encode``
    (stored -> float32 -> stored, default a dtype cast) are the XLA pass's, which
    ``jax.jvp``/``jax.grad`` go through."""
    reads_params = o.decayed or o.write_params
    offsets = np.array([slot.offset for slot in slots], np.int64)
    if decode is None:
        decode = lambda moments: tuple(x.astype(jnp.float32) for x in moments)  # noqa: E731
    if encode is None:
        dtypes = [x.dtype for x in moments]
        encode = lambda new: tuple(x.astype(d) for x, d in zip(new, dtypes))  # noqa: E731

    def xla(scalars, moments, params, grads):
        outputs, new = xla_group_pass(scalars, decode(moments), params, grads, slots, o)
        return outputs, encode(new)

    @jax.custom_jvp
    def kernel(scalars, moments, params, grads):
        vector = jnp.stack([jnp.asarray(x, jnp.float32) for x in scalars])
        outputs = []
        for start in range(0, len(grads), LEAVES_PER_CALL):  # the moments thread through
            part = slice(start, start + LEAVES_PER_CALL)
            out, moments = native.adam_step(
                vector,
                moments,
                (params or [])[part],
                grads[part],
                offsets[part],
                seeds=seeds,
                **o._asdict(),
            )
            outputs += out
        return outputs, moments

    kernel.defjvp(lambda primals, tangents: jax.jvp(xla, primals, tangents))
    return kernel(scalars, moments, params if reads_params else None, grads)


def native_moments_group_pass(
    scalars: StepScalars,
    moments: tuple[jax.Array, ...],
    params: list[jax.Array] | None,
    grads: list[jax.Array],
    slots: list[LeafSlot],
    o: GroupOptions,
) -> tuple[list[jax.Array], tuple[jax.Array, ...]]:
    """``update``'s pass (``u`` per leaf, not written over θ) in two parts: the kernel writes
    the new float32 moments in place (reads g, m, v; 20 bytes per parameter), then XLA forms
    each leaf's ``u`` from them (reads m, v, θ), an elementwise loop that XLA fuses into the
    caller's ``θ + u``: 36 bytes per parameter in all and no buffer for ``u`` (a fresh one costs
    its page faults every step). The arguments and results of ``xla_group_pass``."""
    offsets = np.array([slot.offset for slot in slots], np.int64)
    shape = moments[0].shape
    alone = len(slots) == 1 and slots[0].shape == shape

    def xla(scalars, moments, grads):
        g = clamped_gradient(
            jnp.reshape(pack_slots(grads, slots, math.prod(shape), jnp.float32), shape), o
        )
        m, v, v_max = moment_pass(
            g, moments[0], moments[1], moments[2] if o.amsgrad else None, scalars
        )
        return (m, v) + ((v_max,) if o.amsgrad else ())

    @jax.custom_jvp
    def kernel(scalars, moments, grads):
        vector = jnp.stack([jnp.asarray(x, jnp.float32) for x in scalars])
        options = o._replace(decayed=False, write_params=False)._asdict()
        for start in range(0, len(grads), LEAVES_PER_CALL):
            part = slice(start, start + LEAVES_PER_CALL)
            _, moments = native.adam_step(
                vector, moments, [], grads[part], offsets[part], moments_only=True, **options
            )
        return moments

    kernel.defjvp(lambda primals, tangents: jax.jvp(xla, primals, tangents))
    new = kernel(scalars, moments, grads)
    second = new[2] if o.amsgrad else new[1]

    def leaf(x: jax.Array, slot: LeafSlot) -> jax.Array:
        return (
            x
            if alone
            else jnp.reshape(jnp.ravel(x)[slot.offset : slot.offset + slot.size], slot.shape)
        )

    outputs = [
        update_from_moments(
            clamped_gradient(jnp.asarray(g, jnp.float32), o),
            leaf(new[0], slot),
            leaf(second, slot),
            params[i] if params is not None and o.decayed else None,
            scalars,
            o,
        )
        for i, (g, slot) in enumerate(zip(grads, slots))
    ]
    return outputs, new


def runs_natively(dtype: np.dtype, grads: list[jax.Array], stored: list[Any]) -> bool:
    """Whether a group is what the native kernel computes: float32 parameters and gradients,
    each moment stored in one of ``native.FORMATS`` (float32, bfloat16 or float16 arrays, or
    the int8 / float16 block formats, to nearest or stochastically), none split along Explicit
    mesh axes (a custom call has no sharding rule)."""
    float32 = np.dtype(np.float32)
    arrays = jax.tree_util.tree_leaves(stored)
    unsplit = all(explicit_sharding(x) is None for x in [*grads, *arrays])
    return (
        dtype == float32
        and all(np.dtype(jnp.result_type(g)) == float32 for g in grads)
        and all(native.moment_format(x) is not None for x in stored)
        and unsplit
    )
