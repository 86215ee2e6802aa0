"""Hyperparameters held in the optimizer state, so they can be read and set between steps.

    opt = aw.inject_hyperparams(aw.adamw)(learning_rate=1e-3, weight_decay=1e-2)
    state = opt.init(params)
    ...
    aw.current_learning_rate(state)                  # for logging
    state = aw.set_hyperparams(state, learning_rate=3e-4)   # takes effect at the next step

The state holds, for each run-time hyperparameter, the value the *next* update will use, as a
float32 scalar (float64 under x64) whatever the parameter dtype, so bf16 parameters do not
round the learning rate (optax #1414). Setting a value swaps one array for another of the same
shape and dtype: a jitted step does not recompile. A hyperparameter given as a schedule is
refilled from the schedule after every step (a value set by hand then lasts one step).

Only the hyperparameters named in ``runtime`` move into the state; the others reach the factory
exactly as given. The default, the learning rate and the weight decay, enter the update
linearly, so the trajectory is bit for bit the one of the plain optimizer (optax #1532, where
every float, b1 and b2 included, became a traced array and ``1 - β`` lost precision).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import find_state, find_states, transformation
from adamw_jax.transforms.plateau import ReduceOnPlateauState

DEFAULT_RUNTIME = ("learning_rate", "weight_decay")


class InjectHyperparamsState(NamedTuple):
    """``count``: int32 steps taken; ``hyperparams``: the values the next update uses;
    ``inner_state``: the wrapped optimizer's state."""

    count: jax.Array
    hyperparams: dict[str, jax.Array]
    inner_state: optax.OptState


def _runtime_names(factory: Callable[..., Any], runtime: Sequence[str] | None) -> tuple[str, ...]:
    accepted = inspect.signature(factory).parameters
    if runtime is None:
        return tuple(name for name in DEFAULT_RUNTIME if name in accepted)
    if isinstance(runtime, str):
        raise TypeError(
            f"runtime must be a sequence of argument names, e.g. ({runtime!r},), not a string."
        )
    unknown = [name for name in runtime if name not in accepted]
    if unknown:
        raise ValueError(
            f"runtime names {unknown} are not arguments of {getattr(factory, '__name__', factory)}; "
            f"choose among {list(accepted)}."
        )
    return tuple(runtime)


def inject_hyperparams(
    factory: Callable[..., optax.GradientTransformation], *, runtime: Sequence[str] | None = None
) -> Callable[..., optax.GradientTransformationExtraArgs]:
    """Wrap an optimizer factory so that the ``runtime`` hyperparameters live in its state.

    Args:
      factory: a function returning an ``optax.GradientTransformation``, e.g. ``aw.adamw``.
      runtime: the argument names to hold in the state, each given as a float or a schedule;
        default ``("learning_rate", "weight_decay")`` (those of them the factory accepts).

    Returns:
      A function taking ``factory``'s arguments and returning an
      ``optax.GradientTransformationExtraArgs`` whose state is an ``InjectHyperparamsState``.
      Arguments are checked when it is called, by building ``factory`` once.
    """
    names = _runtime_names(factory, runtime)
    signature = inspect.signature(factory)

    def wrapped(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        for name in names:
            check.check_real_scalar(name, given[name], allow_schedule=True)
        schedules = {name: given[name] for name in names if callable(given[name])}
        factory(**given)  # validates every argument now, with the values as given

        def values_at(count: jax.Array, current: dict[str, jax.Array]) -> dict[str, jax.Array]:
            return {
                name: num.hyperparameter_at(schedules[name], count)
                if name in schedules
                else current[name]
                for name in names
            }

        def build(values: dict[str, jax.Array]) -> optax.GradientTransformationExtraArgs:
            return optax.with_extra_args_support(factory(**{**given, **values}))

        def init_fn(params: optax.Params) -> InjectHyperparamsState:
            count = num.zero_count()
            values = values_at(
                count,
                {
                    name: num.as_hyperparameter(given[name])
                    for name in names
                    if name not in schedules
                },
            )
            return InjectHyperparamsState(count, values, build(values).init(params))

        def update_fn(
            updates: optax.Updates,
            state: InjectHyperparamsState,
            params: optax.Params | None = None,
            **extra_args: Any,
        ) -> tuple[optax.Updates, InjectHyperparamsState]:
            updates, inner_state = build(state.hyperparams).update(
                updates, state.inner_state, params, **extra_args
            )
            count = num.safe_increment(state.count)
            return updates, InjectHyperparamsState(
                count, values_at(count, state.hyperparams), inner_state
            )

        return transformation(init_fn, update_fn)

    return wrapped


def current_hyperparams(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """The run-time hyperparameters the next update will use, from anywhere in ``opt_state``
    (built with ``aw.inject_hyperparams(aw.adamw)(...)``)."""
    return dict(
        find_state(opt_state, InjectHyperparamsState, transform="inject_hyperparams").hyperparams
    )


def current_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The learning rate of the next step: the injected ``learning_rate`` times the scale of
    every ``reduce_on_plateau`` in the state (what torch's ``get_last_lr`` reports)."""
    hyperparams = current_hyperparams(opt_state)
    if "learning_rate" not in hyperparams:
        raise ValueError(
            f"the state holds no learning_rate, only {sorted(hyperparams)}; inject it with "
            "runtime=('learning_rate', ...)."
        )
    rate = hyperparams["learning_rate"]
    for plateau in find_states(opt_state, ReduceOnPlateauState):
        rate = rate * plateau.scale
    return rate


# The ranges of the hyperparameters adamw/adam take: (low, high, high_inclusive).
_RANGES = {
    "learning_rate": (0.0, math.inf, True),
    "weight_decay": (0.0, math.inf, True),
    "b1": (0.0, 1.0, False),
    "b2": (0.0, 1.0, False),
    "eps": (0.0, math.inf, True),
    "eps_root": (0.0, math.inf, True),
}


def _check_value(name: str, value: Any) -> None:
    """A concrete value set by hand is checked as the factory checks it: finite, and in range
    for the names ``adamw``/``adam`` know (a traced value cannot be inspected)."""
    low, high, high_inclusive = _RANGES.get(name, (-math.inf, math.inf, True))
    check.check_range(
        name,
        value,
        low=low,
        high=high,
        high_inclusive=high_inclusive,
        finite=True,
        hint=f"set_hyperparams(state, {name}=...) sets the value the next update "
        "uses; pass one the optimizer could have been built with.",
    )


def set_hyperparams(opt_state: optax.OptState, **values: Any) -> optax.OptState:
    """A copy of ``opt_state`` whose next update uses ``values`` (float32 scalars).

    Raises a ValueError naming any hyperparameter the state does not hold, and any concrete
    value out of its range (a negative or NaN learning rate, ``b2 >= 1``...).
    """
    held = current_hyperparams(opt_state)
    unknown = sorted(set(values) - set(held))
    if unknown:
        raise ValueError(
            f"cannot set {unknown}: the state holds only {sorted(held)}; name them in "
            "inject_hyperparams(..., runtime=...)."
        )
    for name, value in values.items():
        _check_value(name, value)
    new = {name: num.as_hyperparameter(value) for name, value in values.items()}

    def replace(node: Any) -> Any:
        if isinstance(node, InjectHyperparamsState):
            return node._replace(hyperparams={**node.hyperparams, **new})
        return node

    return jax.tree_util.tree_map(
        replace, opt_state, is_leaf=lambda node: isinstance(node, InjectHyperparamsState)
    )
