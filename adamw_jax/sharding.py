"""Shardings for the optimizer state: like the parameters, replicated, or ZeRO-1.

``state_shardings(state, param_shardings)`` returns a tree with the structure of ``state`` and a
``jax.sharding.NamedSharding`` on every array leaf, ready for ``jax.jit(..., out_shardings=)``
or ``jax.device_put``. No state type is named: the state is walked from its root and

* a subtree *mirrors the parameters* when the parameters' tree structure is a prefix of it and
  the piece under each parameter is an array of a compatible shape (the parameter's own shape
  when ``param_shardings`` carries shapes) or empty (``optax.MaskedNode``, ``None``). Each of
  its arrays gets its parameter's sharding: moments, EMAs, accumulators, in any chain,
  ``optax.masked`` or ``optax.inject_hyperparams`` wrapper;
* an array whose type is split along Explicit mesh axes (JAX's sharding in types: an abstract
  state from ``jax.eval_shape`` or a state on such a mesh, e.g. the moment buffer the fused
  optimizer keeps in a large leaf's own shape and sharding) keeps that sharding;
* every other array (step counters, injected hyperparameters, loss scales, flat or blockwise
  buffers of other shapes) is replicated.

A mapping in the state keyed like the parameters (some keys shared) but of another tree
structure, when nothing in the state mirrors the parameters, means ``param_shardings`` belongs
to other parameters: a ValueError names where and which keys differ, instead of replicating
every moment.

ZeRO-1 (``zero_axis="data"``): each array is additionally split along the mesh axis
``zero_axis`` (or several axes, given as a tuple), on its first dimension ``d`` with
``shape[d] % (size of the axes already on d × size of zero_axis) == 0``. An array that is
already split along ``zero_axis``, or has no such dimension (a scalar, a bias of 5 on 8
devices), keeps its sharding: it is not padded, since the state's shapes are the parameters'
and padding would change them. Its bytes stay replicated over ``zero_axis``, which is
negligible for the small leaves this hits. Each device then holds ``1/N`` of the optimizer
state and XLA inserts the all-gather of the update (the collectives ZeRO-1 needs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

if TYPE_CHECKING:  # only named in annotations (NamedSharding.mesh may be one)
    from jax.sharding import AbstractMesh

ZeroAxis = str | Sequence[str] | None


class _ParamLayout(NamedTuple):
    """A parameter's sharding and, when known, its shape."""

    sharding: NamedSharding
    shape: tuple[int, ...] | None


def _spec_axes(entry: Any) -> tuple[str, ...]:
    """The mesh axes of one ``PartitionSpec`` entry (``None``, a name or a tuple of names)."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _axes_size(mesh: Mesh | AbstractMesh, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[axis] for axis in axes)


def _resolve_mesh(param_leaves: list[Any], mesh: Mesh | None) -> Mesh | AbstractMesh:
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.")
        return mesh
    for leaf in param_leaves:
        sharding = getattr(leaf, "sharding", leaf)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    raise ValueError(
        "state_shardings could not find a mesh: param_shardings holds no NamedSharding. Pass "
        "mesh=jax.make_mesh(...) (needed to replicate the step counters)."
    )


def _param_layout(leaf: Any, mesh: Mesh | AbstractMesh) -> _ParamLayout:
    """Read one leaf of ``param_shardings``: a NamedSharding, a PartitionSpec (on ``mesh``), or
    an array / ``jax.ShapeDtypeStruct`` carrying a NamedSharding (its shape is then known)."""
    shape = tuple(leaf.shape) if hasattr(leaf, "shape") and hasattr(leaf, "sharding") else None
    sharding = leaf.sharding if shape is not None else leaf
    if isinstance(sharding, PartitionSpec):
        sharding = NamedSharding(mesh, sharding)
    if not isinstance(sharding, NamedSharding):
        raise TypeError(
            "param_shardings leaves must be jax.sharding.NamedSharding, PartitionSpec, or arrays "
            f"/ jax.ShapeDtypeStruct carrying a NamedSharding; got {type(leaf).__name__} "
            f"{leaf!r}. Build them with NamedSharding(mesh, PartitionSpec(...))."
        )
    return _ParamLayout(sharding, shape)


def _check_zero_axes(zero_axis: ZeroAxis, mesh: Mesh | AbstractMesh) -> tuple[str, ...]:
    if zero_axis is None:
        return ()
    axes = (zero_axis,) if isinstance(zero_axis, str) else tuple(zero_axis)
    unknown = [axis for axis in axes if axis not in mesh.axis_names]
    if not axes or unknown:
        raise ValueError(
            f"zero_axis={zero_axis!r} must name axes of the mesh, whose axes are "
            f"{tuple(mesh.axis_names)}; pass e.g. zero_axis={mesh.axis_names[0]!r}, or None "
            "for no ZeRO-1 split."
        )
    return axes


def _typed_sharding(leaf: Any, mesh: Mesh | AbstractMesh) -> NamedSharding | None:
    """``leaf``'s sharding on ``mesh`` when its spec names Explicit axes of its mesh (then it is
    part of the leaf's type and jit keeps it), else None."""
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return None
    explicit = set(sharding.mesh.abstract_mesh.explicit_axes)
    if not any(set(_spec_axes(entry)) & explicit for entry in sharding.spec):
        return None
    return NamedSharding(mesh, sharding.spec, memory_kind=sharding.memory_kind)


def _fits(shape: tuple[int, ...], layout: _ParamLayout) -> bool:
    """Whether an array of ``shape`` can carry the parameter's sharding as its mirror."""
    if layout.shape is not None:
        return shape == layout.shape
    spec = layout.sharding.spec
    return len(spec) <= len(shape) and all(
        size % _axes_size(layout.sharding.mesh, _spec_axes(entry)) == 0
        for size, entry in zip(shape, spec)
    )


def _zero_split(
    sharding: NamedSharding, shape: tuple[int, ...], zero_axes: tuple[str, ...]
) -> NamedSharding:
    """``sharding`` additionally split along ``zero_axes`` on the first dimension that divides
    evenly; unchanged when already split that way or when no dimension divides."""
    entries = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    used = {axis for entry in entries for axis in _spec_axes(entry)}
    missing = tuple(axis for axis in zero_axes if axis not in used)
    if not missing:
        return sharding
    for dim, (size, entry) in enumerate(zip(shape, entries)):
        axes = _spec_axes(entry) + missing
        if size % _axes_size(sharding.mesh, axes) == 0:
            entries[dim] = axes[0] if len(axes) == 1 else axes  # axes: >= 1 (missing)
            return NamedSharding(
                sharding.mesh, PartitionSpec(*entries), memory_kind=sharding.memory_kind
            )
    return sharding


def state_shardings(
    opt_state_or_abstract: Any,
    param_shardings: Any,
    mesh: Mesh | None = None,
    zero_axis: ZeroAxis = None,
) -> Any:
    """The ``NamedSharding`` of every array in an optimizer state (rules in the module docstring).

    Args:
      opt_state_or_abstract: an optimizer state, or its abstract form
        ``jax.eval_shape(optimizer.init, abstract_params)``; any optax state works.
      param_shardings: a tree with the parameters' structure whose leaves are
        ``NamedSharding``, ``PartitionSpec`` (then ``mesh`` is needed), or the sharded
        parameters themselves (arrays or ``jax.ShapeDtypeStruct`` with a sharding), in which
        case shapes are matched exactly.
      mesh: the mesh for replicated leaves and PartitionSpecs; by default the mesh of the first
        ``NamedSharding`` in ``param_shardings``.
      zero_axis: ``None``, or the mesh axis (or tuple of axes) to split every state array along
        (ZeRO-1): each device then stores ``1/size(zero_axis)`` of the moments.

    Returns:
      A tree with the structure of the state and a ``NamedSharding`` on every array leaf.
    """
    param_leaves, params_def = jax.tree_util.tree_flatten(
        param_shardings, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    state_mesh = _resolve_mesh(param_leaves, mesh)
    layouts = [_param_layout(leaf, state_mesh) for leaf in param_leaves]
    zero_axes = _check_zero_axes(zero_axis, state_mesh)
    replicated = NamedSharding(state_mesh, PartitionSpec())

    def place(sharding: NamedSharding, leaf: Any) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        return _zero_split(sharding, shape, zero_axes) if zero_axes else sharding

    def mirrored_pieces(node: Any) -> list[Any] | None:
        """The pieces of ``node`` under each parameter, if ``node`` mirrors the parameters."""
        if not _has_structure(params_def, node):
            return None
        pieces = params_def.flatten_up_to(node)
        for piece, layout in zip(pieces, layouts):
            if not jax.tree_util.tree_leaves(piece):
                continue
            if not hasattr(piece, "shape") or not _fits(tuple(piece.shape), layout):
                return None
        return pieces

    mirrored: list[bool] = []
    mismatched: list[tuple[Any, Any]] = []  # (path, node): keyed like the parameters, not mirroring

    def shard(node: Any, path: tuple[Any, ...]) -> Any:
        if not jax.tree_util.tree_leaves(node):
            return node
        pieces = mirrored_pieces(node)
        if pieces is not None:
            mirrored.append(True)
            return params_def.unflatten(
                [
                    place(layout.sharding, piece) if jax.tree_util.tree_leaves(piece) else piece
                    for piece, layout in zip(pieces, layouts)
                ]
            )
        if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(node)):
            return place(_typed_sharding(node, state_mesh) or replicated, node)
        if _shares_keys(node, param_shardings) and not _has_structure(params_def, node):
            mismatched.append((path, node))
        children = jax.tree_util.tree_flatten_with_path(
            node, is_leaf=lambda child: child is not node
        )[0]
        node_def = jax.tree_util.tree_structure(node, is_leaf=lambda child: child is not node)
        return node_def.unflatten([shard(child, path + key) for key, child in children])

    result = shard(opt_state_or_abstract, ())
    if mismatched and not mirrored:
        _raise_mismatch(*mismatched[0], param_shardings)
    return result


def _has_structure(params_def: Any, node: Any) -> bool:
    """Whether the parameters' tree structure is a prefix of ``node``'s (whatever the shapes
    under it: a factored second moment mirrors the parameters with other shapes)."""
    try:
        params_def.flatten_up_to(node)
    except (ValueError, TypeError):
        return False
    return True


def _shares_keys(node: Any, param_shardings: Any) -> bool:
    """Whether ``node`` is a mapping keyed like the parameters' (a moment tree, say)."""
    return (
        isinstance(node, Mapping)
        and isinstance(param_shardings, Mapping)
        and bool(set(node) & set(param_shardings))
    )


def _raise_mismatch(path: tuple[Any, ...], node: Any, param_shardings: Any) -> None:
    where = jax.tree_util.keystr(path) or "the state"
    only_state = sorted(map(str, set(node) - set(param_shardings)))
    only_params = sorted(map(str, set(param_shardings) - set(node)))
    detail = (
        f"keys only in the state: {only_state}; only in param_shardings: {only_params}"
        if only_state or only_params
        else f"the state has {jax.tree_util.tree_structure(node)}, param_shardings "
        f"{jax.tree_util.tree_structure(param_shardings)}"
    )
    raise ValueError(
        f"param_shardings does not match the state: {where} is keyed like the parameters but "
        f"does not have their tree structure ({detail}), and no part of the state does, so "
        "every array would be replicated. Pass the shardings of the parameters the state was "
        "initialised with (the same tree)."
    )
