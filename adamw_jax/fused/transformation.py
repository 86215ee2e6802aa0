"""Fused AdamW: the whole step as one elementwise pass over a few contiguous flat buffers.

``adamw(..., fused=True)`` lands here. The moments live in one flat buffer per group of leaves
(a group: one parameter dtype, decayed or not; a leaf of 2**16 elements or more is a group of its
own, kept in its shape), so the state is a handful of arrays however many small tensors the model
has. Per step, every scalar is formed once, in float32 (float64 under x64):

    t = count + 1,   c1 = 1 - β1^t,   c2 = 1 - β2^t,   c1' = 1 - β1^(t+1),   g ← clamp(g)
    m ← β1·m + (1-β1)·g                v ← β2·v + (1-β2)·|g|²      (AMSGrad: v̄ ← max(v̄, v))
    "adam":  u = -η·ratio(n, sqrt(v·(1/c2) + eps_root) + eps),  n = (1/c1)·m
             Nesterov: n = (β1/c1')·m + ((1-β1)/c1)·g
    "hat":   u = -a·ratio(m, sqrt(v + eps_root) + eps),  a = η·sqrt(c2)/c1
    decay:   u ← u - k·θ,  k = η·λ (coupled) or s·λ (decoupled, s = η/η_peak)

with the unfused step's kernels: ``clamp`` is ``_numerics.limit_magnitude`` (nothing overflows)
and ``ratio`` is ``_numerics.adam_ratio`` (``sign(n)`` where the denominator is 0, eps = 0). The
per-element work is one pass with a single divide and a single square root; the update differs
from the unfused chain's only by float32 rounding (the bias corrections are applied as scalar
factors instead of dividing each element).

Low-precision moments (``mu_dtype``/``nu_dtype`` of bfloat16, float16 or ``"int8"``, stochastic
rounding) use ``adamw_jax.lowbit``'s storage on the tuple of buffers. For the block formats, the
layout keeps the unfused path's rule, leaf by leaf: a leaf of 4096 elements or more goes to a
group whose leaves each start at a multiple of the 256-element block (so a block never straddles
two leaves and holds exactly the values it holds unfused), and smaller leaves go to groups kept in
float32. Deterministic formats then store bit for bit what the unfused path stores; stochastic
rounding draws its noise per buffer instead of per leaf (same distribution, other draws).

On XLA:CPU the pass of a float32 group (moments in any storage format: decoded, stepped and
encoded per block of 256 in the same loop) is one
call of a native kernel per 128 leaves (``adamw_jax.native``; see ``enabled()`` for when):
XLA:CPU would compile it into three loops per tensor (about 40 bytes of traffic per parameter)
and one kernel per slice back to a leaf; the kernel takes the leaves as they are, makes one pass
over them (28 bytes per parameter) and writes each leaf's output directly. Its result differs from
the XLA pass's only by float32 rounding (XLA contracts ``b·m + c·g`` into a fused multiply-add,
the kernel rounds every operation), and ``jax.grad``/``jax.vmap`` go through it.

Two ways to run a step: ``update`` returns ``u`` as every optax transformation does (for a
large leaf the kernel then writes only the moments and XLA forms ``u`` from them, fused into the
caller's ``θ + u``: 36 bytes per parameter, and no fresh buffer for ``u``), and ``step``
(``FusedTransformation.step``, called by ``adamw_jax.update_and_apply``) returns ``θ + u``: the
kernel then writes θ, m and v in place, the whole AdamW step in one pass. With many small leaves
(thousands), flat parameters (``adamw_jax.flat``) also remove the per-array cost of a jitted
call (about 2 µs per array passed in or out).

The flat layout is simple to split: ``pad_multiple`` rounds each buffer's length up to a multiple
of a block size (8-bit storage) or a device count (sharding); the zero padding stays zero.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax import lowbit
from adamw_jax.fused import _group_pass, native
from adamw_jax.fused._flat_layout import FlatLayout, explicit_sharding, layout_of
from adamw_jax.fused._group_pass import StepScalars
from adamw_jax.transforms._masking import Mask, resolve_mask
from adamw_jax.transforms.moments import scale_by_adam


class FusedAdamState(NamedTuple):
    """``count``: int32 steps taken; ``mu``/``nu``: one buffer of the first/second moment per
    leaf group (1-D; a large leaf alone in its group keeps its own shape; a
    ``lowbit.BlockwiseArray`` in the block formats); ``nu_max``: the running maximum of ``nu``
    (AMSGrad), else ``None``."""

    count: jax.Array
    mu: tuple[jax.Array | lowbit.BlockwiseArray, ...]
    nu: tuple[jax.Array | lowbit.BlockwiseArray, ...]
    nu_max: tuple[jax.Array | lowbit.BlockwiseArray, ...] | None


class FusedTransformation(optax.GradientTransformationExtraArgs):
    """An ``optax.GradientTransformation`` (``init``, ``update``) that can also apply itself:
    ``step(grads, state, params) -> (params, state)`` computes ``θ + u`` in the same pass as
    ``u`` (on CPU the native kernel writes θ, m and v in one loop: 28 bytes per parameter
    instead of 40). ``adamw_jax.update_and_apply`` calls it; inside ``optax.chain`` or any
    wrapper only ``init``/``update`` are seen, and everything works as usual."""

    step: Callable[[optax.Updates, Any, optax.Params], tuple[optax.Params, Any]]

    def __new__(cls, init: Any, update: Any, step: Any) -> FusedTransformation:
        self = super().__new__(cls, init, update)
        self.step = step
        return self

    def __getnewargs__(self) -> tuple[Any, Any, Any]:
        return (self.init, self.update, self.step)


def fused_adam_family(
    learning_rate: optax.ScalarOrSchedule,
    adam_kwargs: dict[str, Any],
    *,
    maximize: bool,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Mask | None = None,
    schedule_multiplier: optax.Schedule | None = None,
    decay_after_learning_rate: bool = False,
    pad_multiple: int = 1,
) -> FusedTransformation:
    """AdamW (or Adam when ``weight_decay`` is None) as one flat-buffer pass.

    Args:
      learning_rate: ``η``, a float or a schedule of the 0-based step.
      adam_kwargs: the arguments of ``scale_by_adam`` (validated with its messages).
      maximize: negate the gradient first.
      weight_decay: ``λ``, a float or a schedule; ``None`` for no decay.
      mask: which leaves to decay (see ``adamw_jax.transforms._masking``).
      schedule_multiplier: ``s_t`` of decoupled decay; ``None`` means 1.
      decay_after_learning_rate: ``True`` for decoupled decay (``k = s·λ``), ``False`` for
        coupled (``k = η·λ``).
      pad_multiple: each flat buffer's length is a multiple of this.

    Returns:
      A ``FusedTransformation`` (an ``optax.GradientTransformation`` with a one-pass ``step``)
      whose state is a ``FusedAdamState``.
    """
    scale_by_adam(**adam_kwargs)  # the argument checks, with the unfused path's messages
    options: dict[str, Any] = dict(
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        eps_root=0.0,
        bias_correction=True,
        eps_mode="adam",
        amsgrad=False,
        nesterov=False,
        mu_dtype=None,
        nu_dtype=None,
        stochastic_rounding=False,
    )
    options.update(adam_kwargs)
    mu_storage, nu_storage = (
        lowbit.moment_storage(
            options[name],
            argument=name,
            second_moment=second,
            stochastic_rounding=options["stochastic_rounding"],
        )
        for name, second in (("mu_dtype", False), ("nu_dtype", True))
    )
    amsgrad = options["amsgrad"]
    layout_for = _layout_builder(
        weight_decay is not None,
        mask,
        pad_multiple,
        blocks=mu_storage.uses_blocks or nu_storage.uses_blocks,
    )
    scalars_at = _scalars_builder(
        learning_rate, options, weight_decay, schedule_multiplier, decay_after_learning_rate
    )

    def init_fn(params: optax.Params) -> FusedAdamState:
        check.check_parameter_leaves(params)
        layout = layout_for(params)
        zeros = _zero_buffers(layout, layout.treedef.flatten_up_to(params))
        nu = _zero_moments(nu_storage, layout, zeros)
        return FusedAdamState(
            num.zero_count(), _zero_moments(mu_storage, layout, zeros), nu, nu if amsgrad else None
        )

    def fused_step(
        updates: optax.Updates,
        state: FusedAdamState,
        params: optax.Params | None,
        write_params: bool,
    ) -> tuple[optax.Updates, FusedAdamState]:
        """``(u, state)``, or with ``write_params`` ``(θ + u, state)``, group by group."""
        has_leaves = bool(jax.tree_util.tree_leaves(updates))
        if (weight_decay is not None or write_params) and params is None and has_leaves:
            raise ValueError(
                "weight decay needs the parameters: call update(updates, state, params)."
            )
        layout = layout_for(updates if params is None else params)
        _check_state_fits(layout, state, amsgrad)
        scalars = scalars_at(state.count)
        count = num.safe_increment(state.count)
        grads = layout.treedef.flatten_up_to(updates)
        _check_gradient_shapes(layout, grads, params)
        param_leaves: list[Any] = (
            layout.treedef.flatten_up_to(params) if params is not None else [None] * len(grads)
        )
        like = tuple(
            jax.ShapeDtypeStruct(s, num.compute_dtype(d))
            for s, d in zip(_buffer_shapes(layout), layout.group_dtypes)
        )
        storages = (mu_storage, nu_storage, nu_storage)  # of mu, nu, nu_max
        streams = (
            lowbit.FIRST_MOMENT_STREAM,
            lowbit.SECOND_MOMENT_STREAM,
            lowbit.MAX_SECOND_MOMENT_STREAM,
        )
        # The noise seed of each group's buffer, per moment (as the storages' encode draws it).
        keys = [lowbit.step_keys(count, stream, layout.num_groups) for stream in streams]
        run_natively = native.enabled()
        outputs: list[Any] = [None] * len(grads)
        new_moments = []
        for group, members in enumerate(layout.leaf_groups()):
            stored = [moment[group] for moment in _stored_moments(state)]
            natively = run_natively and _group_pass.runs_natively(
                layout.group_dtypes[group], [grads[i] for i in members], stored
            )
            # The kernel reads and writes the stored moments itself. It writes θ + u, or the u of
            # small leaves; a large leaf's u would be a fresh buffer (its page faults cost more
            # than the pass), so there the kernel writes the float32 moments only and XLA forms
            # u from them, fused into the caller's θ + u.
            small = layout.group_keys[group][2] < 0
            float32 = all(native.moment_format(x) == 0 for x in stored)
            group_keys = [key[group] for key in keys]
            decode = functools.partial(_decode, storages, like[group])
            extra: dict[str, Any] = {}
            if natively and (write_params or small or not float32):
                group_pass, moments = _group_pass.native_group_pass, tuple(stored)
                extra = dict(
                    decode=decode,
                    encode=functools.partial(_encode, storages, tuple(stored), group_keys),
                    seeds=jnp.stack(group_keys) if options["stochastic_rounding"] else None,
                )
            elif natively and float32:
                group_pass, moments = _group_pass.native_moments_group_pass, tuple(stored)
            else:
                group_pass, moments = _group_pass.xla_group_pass, decode(tuple(stored))
            leaf_out, group_moments = group_pass(
                scalars,
                moments,
                [param_leaves[i] for i in members] if params is not None else None,
                [grads[i] for i in members],
                [layout.slots[i] for i in members],
                _group_pass.GroupOptions(
                    amsgrad,
                    options["nesterov"],
                    maximize,
                    decayed=layout.group_keys[group][1],
                    write_params=write_params,
                ),
                **extra,
            )
            for i, out in zip(members, leaf_out):
                dtype = param_leaves[i].dtype if write_params else jnp.result_type(grads[i])
                outputs[i] = out if out.dtype == dtype else out.astype(dtype)
            new_moments.append(group_moments)
        mu, nu, *nu_max = zip(*new_moments) if new_moments else ((), (), ())

        def encoded(storage: lowbit.MomentStorage, values: Any, previous: Any, stream: int) -> Any:
            """The group buffers ``values`` stored as ``previous`` are (a tuple, as they)."""
            return storage.encode(values, previous, count, stream)

        return layout.treedef.unflatten(outputs), FusedAdamState(
            count=count,
            mu=encoded(mu_storage, mu, state.mu, lowbit.FIRST_MOMENT_STREAM),
            nu=encoded(nu_storage, nu, state.nu, lowbit.SECOND_MOMENT_STREAM),
            nu_max=encoded(nu_storage, nu_max[0], state.nu_max, lowbit.MAX_SECOND_MOMENT_STREAM)
            if amsgrad
            else None,
        )

    def update_fn(
        updates: optax.Updates,
        state: FusedAdamState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, FusedAdamState]:
        del extra_args  # optax's rule: a transform ignores the extra arguments it does not use
        return fused_step(updates, state, params, write_params=False)

    def step_fn(
        grads: optax.Updates, state: FusedAdamState, params: optax.Params, **extra_args: Any
    ) -> tuple[optax.Params, FusedAdamState]:
        del extra_args
        return fused_step(grads, state, params, write_params=True)

    return FusedTransformation(init_fn, update_fn, step_fn)


OWN_BUFFER_SIZE = 1 << 16
"""Leaves with at least this many elements keep a buffer of their own: packing them would copy
them into a whole-buffer temporary every step, and on CPU a fresh temporary of hundreds of MB
costs more in page faults than the pass itself (5x on GPT-2 shapes). Smaller leaves share one
buffer per (dtype, decayed) group, which is what removes the per-buffer cost."""


def _layout_builder(
    has_decay: bool, mask: Mask | None, pad_multiple: int, *, blocks: bool
) -> Callable[[optax.Params], FlatLayout]:
    """``params -> layout`` grouping leaves by (dtype, decayed, own buffer if large, in blocks).

    ``blocks``: a moment uses a block format; leaves it would store in blocks unfused (4096
    elements or more, real) then form groups of their own whose leaves start on block
    boundaries."""

    def layout_for(params: optax.Params) -> FlatLayout:
        if has_decay and mask is not None:
            flags = jax.tree_util.tree_leaves(resolve_mask(mask, params))
        else:
            flags = [has_decay] * len(jax.tree_util.tree_leaves(params))

        def group_key(index: int, leaf: Any) -> tuple[np.dtype, bool, int, bool]:
            dtype = np.dtype(jnp.result_type(leaf))
            alone = index if np.size(leaf) >= OWN_BUFFER_SIZE else -1
            in_blocks = (
                blocks
                and np.size(leaf) >= lowbit.MIN_BLOCKWISE_SIZE
                and not jnp.issubdtype(dtype, jnp.complexfloating)
            )
            return dtype, flags[index], alone, in_blocks

        return layout_of(
            params,
            group_key=group_key,
            multiple=pad_multiple,
            alignment=lambda key: lowbit.BLOCK_SIZE if key[3] else 1,
        )

    return layout_for


def _zero_moments(
    storage: lowbit.MomentStorage, layout: FlatLayout, zeros: tuple[jax.Array, ...]
) -> tuple[Any, ...]:
    """One zero moment buffer per group (``zeros``, see ``_zero_buffers``), stored as
    ``storage`` says; a group of leaves that the unfused path keeps in float32 (under 4096
    elements each) keeps float32 here too."""
    small = dataclasses.replace(storage, dtype=jnp.float32) if storage.uses_blocks else storage
    return tuple(
        (storage if key[3] else small).init(buffer) for key, buffer in zip(layout.group_keys, zeros)
    )


def _zero_buffers(layout: FlatLayout, leaves: list[Any]) -> tuple[jax.Array, ...]:
    """Per group, zeros of the buffer's shape and the group's dtype. A leaf split along Explicit
    mesh axes that has the buffer to itself gives its sharding to them (its moments are then
    split as the leaf is, as the unfused path's are); other buffers are replicated."""
    zeros = []
    for group, (members, shape) in enumerate(zip(layout.leaf_groups(), _buffer_shapes(layout))):
        dtype = layout.group_dtypes[group]
        leaf = leaves[members[0]] if len(members) == 1 else None
        split = (
            leaf is not None
            and layout.slots[members[0]].shape == shape
            and (explicit_sharding(leaf) is not None)
        )
        zeros.append(
            jnp.zeros_like(leaf, dtype) if leaf is not None and split else jnp.zeros(shape, dtype)
        )
    return tuple(zeros)


def _buffer_shapes(layout: FlatLayout) -> tuple[tuple[int, ...], ...]:
    """The shape of each group's buffers: 1-D, except that a group holding a single unpadded leaf
    keeps the leaf's shape. Then the pass, the state writes and the caller's ``θ + u`` all have
    one shape and XLA runs them as one in-place loop family, as for an unfused leaf; an [n] pass
    feeding an [a, b] add makes it copy m and v instead (2x slower on GPT-2 shapes)."""
    shapes = []
    for group, members in enumerate(layout.leaf_groups()):
        size = layout.group_sizes[group]
        slot = layout.slots[members[0]] if len(members) == 1 else None
        shapes.append(slot.shape if slot is not None and slot.size == size else (size,))
    return tuple(shapes)


def _holds(stored: jax.Array | lowbit.BlockwiseArray, size: int) -> bool:
    if isinstance(stored, lowbit.BlockwiseArray):
        return stored.values.shape[0] == lowbit.block_count(size)
    return stored.size == size


def _check_state_fits(layout: FlatLayout, state: FusedAdamState, amsgrad: bool) -> None:
    if len(state.mu) != layout.num_groups or not all(map(_holds, state.mu, layout.group_sizes)):
        sizes = tuple(
            int((b.values if isinstance(b, lowbit.BlockwiseArray) else b).size) for b in state.mu
        )
        raise ValueError(
            f"the fused state holds flat buffers of sizes {sizes} but these parameters need "
            f"{layout.group_sizes}: call init with parameters of the same shapes, dtypes and "
            "mask as the gradients passed to update."
        )
    if amsgrad != (state.nu_max is not None):
        raise ValueError(
            f"this optimizer has amsgrad={amsgrad} but the state was made with "
            f"amsgrad={not amsgrad}: call init with the optimizer you update with."
        )


def _check_gradient_shapes(layout: FlatLayout, grads: list[Any], params: Any) -> None:
    """Each gradient has its parameter's shape (the layout's), or a ValueError names the leaf.

    Gradients of another dtype are accepted, as on the unfused path: they are read in the
    compute dtype and the update is rounded to the parameter's."""
    for index, (grad, slot) in enumerate(zip(grads, layout.slots)):
        if tuple(np.shape(grad)) != slot.shape:
            path = jax.tree_util.tree_flatten_with_path(params)[0][index][0]
            raise ValueError(
                f"the gradient at {jax.tree_util.keystr(path)} has shape {tuple(np.shape(grad))} "
                f"but the parameter there has shape {slot.shape}: pass the gradients of the "
                "parameters you update (jax.grad with respect to them), leaf for leaf."
            )


def _scalars_builder(
    learning_rate: optax.ScalarOrSchedule,
    options: dict[str, Any],
    weight_decay: optax.ScalarOrSchedule | None,
    schedule_multiplier: optax.Schedule | None,
    decay_after_learning_rate: bool,
) -> Callable[[jax.Array], StepScalars]:
    """``count -> StepScalars``, the same hyperparameter rules as ``scale_by_adam``."""
    b1, b2 = options["b1"], options["b2"]

    def scalars_at(count: jax.Array) -> StepScalars:
        # Formed here, not when the transform is built: building an optimizer must not start a
        # JAX backend (jax.distributed.initialize has to come first in multi-host programs).
        one_minus_b2 = num.one_minus(b2)
        eta = num.hyperparameter_at(learning_rate, count)
        b1_t = num.hyperparameter_at(b1, count)
        one_minus_b1 = num.one_minus(b1) if not callable(b1) else 1 - b1_t
        step = num.safe_increment(count).astype(b1_t.dtype)
        one = jnp.ones([], b1_t.dtype)
        if options["bias_correction"]:
            c1 = num.bias_correction(one_minus_b1, step)
            c2 = num.bias_correction(one_minus_b2, step)
            c1_next = num.bias_correction(one_minus_b1, step + 1)
        else:
            c1 = c2 = c1_next = one
        hat = options["eps_mode"] == "hat"
        step_size = eta * jnp.sqrt(c2) / c1 if hat else eta
        if weight_decay is None:
            decay = jnp.zeros([], b1_t.dtype)
        else:
            decay = num.hyperparameter_at(weight_decay, count)
            scale = (
                eta
                if not decay_after_learning_rate
                else (
                    one
                    if schedule_multiplier is None
                    else num.hyperparameter_at(schedule_multiplier, count)
                )
            )
            decay = scale * decay
        return StepScalars(
            b1=b1_t,
            one_minus_b1=one_minus_b1,
            b2=num.as_hyperparameter(b2),
            one_minus_b2=one_minus_b2,
            inverse_c2=one if hat else one / c2,
            eps=num.as_hyperparameter(options["eps"]),
            eps_root=num.as_hyperparameter(options["eps_root"]),
            step_size=step_size,
            moment_scale=one if hat else one / c1,
            nesterov_m=b1_t / c1_next,
            nesterov_g=one_minus_b1 / c1,
            decay=decay,
        )

    return scalars_at


def _decode(
    storages: tuple[lowbit.MomentStorage, ...], like: jax.ShapeDtypeStruct, stored: tuple[Any, ...]
) -> tuple[Any, ...]:
    """A group's stored moments decoded to float32 buffers shaped ``like``."""
    return tuple(storage.decode(x, like) for storage, x in zip(storages, stored))


def _encode(
    storages: tuple[lowbit.MomentStorage, ...],
    stored: tuple[Any, ...],
    keys: list[jax.Array],
    values: tuple[jax.Array, ...],
) -> tuple[Any, ...]:
    """A group's new float32 moments in the layout of its ``stored`` ones (seeds ``keys``)."""
    return tuple(
        storage.encode_leaf(x, s, key if storage.stochastic_rounding else None)
        for storage, x, s, key in zip(storages, values, stored, keys)
    )


def _stored_moments(state: FusedAdamState) -> tuple[Any, ...]:
    return (state.mu, state.nu) + (() if state.nu_max is None else (state.nu_max,))
