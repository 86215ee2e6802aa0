"""Weight-decay masks from parameter names.

A parameter's name is its key path joined by ``/``: ``{"dense": {"bias": b}}`` names ``b``
``"dense/bias"``, list and tuple positions are numbers (``"layers/0/kernel"``), and attributes of
dataclasses or NamedTuples are their field names. This is the name Flax's ``traverse_util`` and
big_vision use, and it contains the Keras variable name (``"kernel"``, ``"bias"``) as its last part.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax


def parameter_names(params: Any) -> Any:
    """A tree like ``params`` whose leaves are the ``/``-joined key paths of its leaves."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: jax.tree_util.keystr(path, simple=True, separator="/"), params
    )


def _compile(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Iterable):
        raise TypeError(
            f"patterns must be a list of regular expressions, got {type(patterns).__name__} "
            f"{patterns!r}; wrap a single pattern in a list, e.g. [{patterns!r}]."
        )
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(
                f"each pattern must be a str, got {type(pattern).__name__} {pattern!r}."
            )
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(
                f"pattern {pattern!r} is not a valid regular expression: {error}. "
                "Escape special characters with re.escape."
            ) from None
    return compiled


def exclude_from_weight_decay(patterns: Iterable[str]) -> Callable[[Any], Any]:
    """A mask for ``adamw(mask=...)`` that decays every parameter except those whose name
    matches one of ``patterns`` anywhere (``re.search``), as Keras'
    ``exclude_from_weight_decay(var_names=...)``.

    Example: ``adamw(mask=exclude_from_weight_decay(["bias", "norm", r"^embed/"]))``.

    Args:
      patterns: regular expressions (a list, not a single str); an empty list decays everything.

    Returns:
      A callable mapping params to a tree of Python bools, ``True`` where decay applies. The
      first time it sees parameters, it warns (``UserWarning``) of patterns matching none of them:
      a misspelt pattern would otherwise decay what it meant to exclude without a word.
    """
    compiled = _compile(patterns)
    warned = False

    def mask(params: Any) -> Any:
        nonlocal warned
        names = parameter_names(params)
        if not warned and jax.tree_util.tree_leaves(names):
            warned = True
            _warn_unmatched(compiled, jax.tree_util.tree_leaves(names))
        return jax.tree_util.tree_map(lambda name: not any(p.search(name) for p in compiled), names)

    return mask


def _warn_unmatched(compiled: list[re.Pattern[str]], names: list[str]) -> None:
    unmatched = [p.pattern for p in compiled if not any(p.search(name) for name in names)]
    if unmatched:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        warnings.warn(
            f"exclude_from_weight_decay: the patterns {unmatched} match no parameter name, so "
            f"they exclude nothing from weight decay (the names are {shown}). Check their "
            "spelling against adamw_jax.transforms.masks.parameter_names(params).",
            UserWarning,
            stacklevel=2,
        )
