"""``plot_schedule``: draw one or several schedules into a PNG (matplotlib, imported lazily)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _steps(steps: int | Sequence[int]) -> np.ndarray:
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        if steps < 1:
            raise ValueError(f"steps must be >= 1 (the number of steps to draw), got {steps}.")
        return np.arange(steps)
    array = np.asarray(steps)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"steps must be an int or a non-empty 1-D sequence of ints, got {steps!r}.")
    return array


def _curves(schedule: optax.Schedule | Mapping[str, optax.Schedule]) -> dict[str, Callable]:
    curves = dict(schedule) if isinstance(schedule, Mapping) else {"": schedule}
    if not curves:
        raise ValueError("schedule is an empty dict; pass a schedule or {label: schedule}.")
    for label, curve in curves.items():
        if not callable(curve):
            raise TypeError(f"schedule {label!r} must be a function of the step, got {curve!r}.")
    return curves


def plot_schedule(
    schedule: optax.Schedule | Mapping[str, optax.Schedule],
    steps: int | Sequence[int],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    ylabel: str = "learning rate",
    log_scale: bool = False,
) -> str:
    """Evaluate ``schedule`` (or each of ``{label: schedule}``) at ``steps`` and save a PNG.

    Args:
      schedule: a function of the 0-based step, or a dict of them (one labelled curve each).
      steps: how many steps to draw (``0 .. steps-1``), or the steps themselves.
      path: where to write the PNG.
      title, ylabel: texts of the figure; the x axis is the step.
      log_scale: draw the values on a logarithmic axis.

    Returns:
      ``path`` as a string.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "plot_schedule draws with matplotlib: pip install matplotlib "
            "(or pip install 'adamw_jax[examples]')",
            name=error.name,
        ) from error

    xs = _steps(steps)
    curves = _curves(schedule)
    labelled = any(curves)
    figure = Figure(figsize=(6.4, 4.0), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, curve in curves.items():
        values = jax.vmap(lambda t, curve=curve: jnp.asarray(curve(t)))(jnp.asarray(xs))
        axes.plot(xs, np.asarray(values, np.float64), label=label or None)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    if log_scale:
        axes.set_yscale("log")
    if title:
        axes.set_title(title)
    if labelled:  # below the axes, never over a curve
        figure.legend(loc="outside lower center", ncols=min(len(curves), 3), fontsize="small")
    axes.grid(alpha=0.3)
    figure.savefig(os.fspath(path), format="png")
    return os.fspath(path)
