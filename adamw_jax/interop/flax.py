"""Flax's two training-state classes, stepping through ``adamw_jax.update_and_apply``.

The port of a Flax loop is one line, the import of the class::

    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)         # before
    optimizer = adamw_jax.flax.Optimizer(model, tx, wrt=nnx.Param)  # after

    state = train_state.TrainState.create(apply_fn=..., params=..., tx=tx)         # before
    state = adamw_jax.flax.TrainState.create(apply_fn=..., params=..., tx=tx)      # after

Everything else (constructor, attributes, ``update``/``apply_gradients``, ``nnx.state`` and
checkpoints, ``nnx.jit``/``jax.jit`` with donation) is Flax's. The one difference is the step:
Flax runs ``tx.update`` then ``optax.apply_updates``, here ``update_and_apply(tx, g, s, θ)``
runs it, which for ``adamw_jax.adamw(..., fused=True)`` (or ``adam``) is one pass that reads
``g, θ, m, v`` and writes ``θ, m, v`` (in place when donated), and for any other optax
transformation is the same two calls, with Flax's result bit for bit.

Importing this module imports Flax; ``import adamw_jax`` alone does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import optax

try:
    from flax import nnx
    from flax.linen.fp8_ops import OVERWRITE_WITH_GRADIENT
    from flax.training import train_state
except ImportError as error:  # pragma: no cover - exercised in a subprocess without flax
    raise ImportError(
        "adamw_jax.flax needs Flax: pip install 'adamw_jax[flax]' (or pip install flax)."
    ) from error

from adamw_jax.updates import update_and_apply

M = TypeVar("M")

__all__ = ["Optimizer", "TrainState"]


def _applied_updates(new_params: Any, params: Any) -> Any:
    """``θ_new − θ`` leaf by leaf: the update as applied (``u`` rounded through ``θ + u``).
    Under ``jit`` it costs nothing unless the caller uses it (XLA drops unused outputs)."""
    return jax.tree_util.tree_map(lambda new, old: new - old, new_params, params)


def _check_grads_match(grads: Any, params: Any) -> None:
    """The gradients have the parameters' paths, or a ValueError names those that differ."""

    def paths(tree: Any) -> set[str]:
        return {
            jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
        }

    missing, unexpected = sorted(paths(params) - paths(grads)), sorted(paths(grads) - paths(params))
    if missing or unexpected:
        raise ValueError(
            f"update(model, grads): grads do not match the model's `wrt` variables (missing "
            f"{missing}, unexpected {unexpected}); take them with nnx.grad(loss_fn)(model), "
            f"filtered as the optimizer's wrt."
        )


class Optimizer(nnx.Optimizer[M]):
    """``flax.nnx.Optimizer`` whose ``update`` is one ``adamw_jax.update_and_apply``.

    A drop-in: ``Optimizer(model, tx, wrt=nnx.Param)`` builds the same object as
    ``nnx.Optimizer`` (it is a subclass: ``step``, ``tx``, ``opt_state``, ``wrt``, ``graph``,
    ``nnx.state(optimizer)`` and checkpoints are Flax's), and ``update(model, grads, **kwargs)``
    takes the same arguments, keyword arguments such as ``value=loss`` forwarded to
    ``tx.update``. With ``tx = adamw_jax.adamw(..., fused=True)`` the step is one pass over
    ``g, θ, m, v``, run in place under ``nnx.jit(..., donate_argnums=...)``; with any other
    ``tx`` it is ``tx.update`` + ``apply_updates``, Flax's trajectory bit for bit::

        optimizer = adamw_jax.flax.Optimizer(model, aw.adamw(1e-3, fused=True), wrt=nnx.Param)

        @nnx.jit(donate_argnums=(0, 1))
        def train_step(model, optimizer, batch):
            loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
            optimizer.update(model, grads)
            return loss
    """

    def update(self, model: M, grads: Any, /, **kwargs: Any) -> optax.Updates:
        """One step: ``θ, s ← update_and_apply(tx, g, s, θ, **kwargs)`` on the ``wrt`` variables
        of ``model``, then ``step += 1``.

        Args:
          model: the NNX module whose ``wrt`` variables are updated in place.
          grads: the gradients from ``nnx.grad`` (a module or a ``State``, filtered by ``wrt``).
          **kwargs: extra arguments of ``tx.update`` (``value=loss`` for a plateau schedule).

        Returns:
          The update as applied, ``θ_new − θ``, structured as the ``wrt`` state (Flax returns
          ``u``; the two agree up to the rounding of ``θ + u``). Unused, XLA drops it.
        """
        params = nnx.as_pure(nnx.state(model, self.wrt, graph=self.graph))
        grad_arrays = nnx.as_pure(nnx.state(grads, self.wrt, graph=self.graph))
        _check_grads_match(grad_arrays, params)
        new_params, new_opt_state = update_and_apply(
            self.tx, grad_arrays, nnx.as_pure(self.opt_state), params, **nnx.as_pure(kwargs)
        )
        nnx.update(model, new_params)
        nnx.update(self.opt_state, nnx.state(new_opt_state, graph=self.graph))
        self.step[...] += 1
        return _applied_updates(new_params, params)


def _check_apply_arguments(
    cls: type, extra_args: Mapping[str, Any] | None, fields: Mapping[str, Any]
) -> None:
    """``extra_args`` is a mapping and ``fields`` are the state's: a keyword of ``tx.update``
    given as a field (``value=loss``) gets a TypeError saying where it goes."""
    if extra_args is not None and not isinstance(extra_args, Mapping):
        raise TypeError(
            f"apply_gradients(extra_args=...) must be a mapping of tx.update's keyword "
            f"arguments, e.g. {{'value': loss}}; got {type(extra_args).__name__}."
        )
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(
            f"apply_gradients got {unknown}, which are not fields of {cls.__name__}: keyword "
            f"arguments of tx.update go in extra_args, e.g. apply_gradients(grads=grads, "
            f"extra_args={{{unknown[0]!r}: ...}})."
        )


class TrainState(train_state.TrainState):
    """``flax.training.train_state.TrainState`` whose ``apply_gradients`` is one
    ``adamw_jax.update_and_apply``.

    A drop-in (a subclass, so fields, ``create``, ``replace``, serialization and subclasses
    adding fields are Flax's): ``TrainState.create(apply_fn=..., params=..., tx=tx)``, then
    ``state.apply_gradients(grads=grads)``. With ``tx = adamw_jax.adamw(..., fused=True)`` the
    step is one pass, in place under ``jax.jit(train_step, donate_argnums=0)``; with any other
    ``tx`` it is Flax's trajectory bit for bit.
    """

    def apply_gradients(
        self, *, grads: Any, extra_args: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> TrainState:
        """``step + 1`` and ``params, opt_state ← update_and_apply(tx, grads, opt_state, params,
        **extra_args)``; ``**kwargs`` are fields to ``replace``, as in Flax.

        Args:
          grads: gradients with the structure of ``params``. As in Flax, when they hold an
            ``OVERWRITE_WITH_GRADIENT`` collection (fp8), only ``grads["params"]`` goes through
            ``tx`` and that collection replaces the parameters' own.
          extra_args: keyword arguments of ``tx.update`` (``{"value": loss}`` for a plateau
            schedule); Flax's class has no way to pass them.
          **kwargs: other fields of the state to replace.
        """
        _check_apply_arguments(type(self), extra_args, kwargs)
        overwrite = OVERWRITE_WITH_GRADIENT in grads
        new_params, new_opt_state = update_and_apply(
            self.tx,
            grads["params"] if overwrite else grads,
            self.opt_state,
            self.params["params"] if overwrite else self.params,
            **(extra_args or {}),
        )
        if overwrite:
            new_params = {
                "params": new_params,
                OVERWRITE_WITH_GRADIENT: grads[OVERWRITE_WITH_GRADIENT],
            }
        return self.replace(
            step=self.step + 1, params=new_params, opt_state=new_opt_state, **kwargs
        )
