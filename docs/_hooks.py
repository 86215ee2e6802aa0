"""MkDocs hook: every public name of adamw_jax has a docstring and a place in the API reference.

A public name is one in ``adamw_jax.__all__`` or in the ``__all__`` (else the public names
defined there) of a public submodule. Each problem is logged as a warning, which
``mkdocs build --strict`` turns into a failed build.

The package's docstrings describe related arguments on one line (``b1, b2, eps: see
scale_by_adam``); Griffe's Google-style parser reads such a line as one unknown parameter and
warns. Those warnings, and only those (a quoted name list with a comma), are logged as INFO.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import griffe

LOG = logging.getLogger("mkdocs.hooks.api_coverage")
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "adamw_jax"
DIRECTIVE = re.compile(r"^:::\s+(\S+)\n((?:[ \t]+.*\n)*)", re.MULTILINE)


GROUPED = re.compile(r"(parameter|Parameter|pair from) '[^']*,[^']*'")


class _GroupedArgumentsFilter(logging.Filter):
    """Griffe's warnings about a line documenting several arguments become INFO records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and GROUPED.search(record.getMessage()):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _public_names(module: griffe.Module) -> list[str]:
    """``__all__`` if the module has one, else the names it defines without a leading ``_``."""
    if module.exports is not None:
        return [str(name) for name in module.exports]
    return [
        name
        for name, member in module.members.items()
        if not name.startswith("_") and not member.is_alias
    ]


def _target(member: griffe.Object | griffe.Alias) -> griffe.Object:
    """What a name points to, through re-exports."""
    return member.final_target if member.is_alias else member


def _documented(api_dir: Path) -> tuple[set[str], set[str]]:
    """The objects named in ``::: path`` blocks of the API pages, and those of them rendered
    with their members (no ``members: false`` option)."""
    blocks = [
        match
        for page in sorted(api_dir.glob("*.md"))
        for match in DIRECTIVE.findall(page.read_text() + "\n")
    ]
    return (
        {path for path, _ in blocks},
        {path for path, options in blocks if "members: false" not in options},
    )


def _resolved(package: griffe.Module, paths: set[str]) -> set[str]:
    """``paths`` and the objects they name through re-exports (``adamw_jax.flat`` is
    ``adamw_jax.fused.flat``)."""
    targets = set(paths)
    for path in paths:
        parts = path.split(".")
        if parts[0] != package.path:
            continue
        try:
            targets.add(
                _target(package.get_member(".".join(parts[1:]))).path if parts[1:] else path
            )
        except (KeyError, griffe.AliasResolutionError):
            pass  # a name mkdocstrings reports itself
    return targets


def _problems(package: griffe.Module, documented: set[str], with_members: set[str]) -> list[str]:
    problems = []
    documented, with_members = _resolved(package, documented), _resolved(package, with_members)
    top_level = {
        _target(package.members[name]).path
        for name in _public_names(package)
        if f"{package.path}.{name}" in documented
    }
    modules = [package] + [
        _target(package.members[name])
        for name in _public_names(package)
        if _target(package.members[name]).is_module
    ]
    for module in modules:
        if not module.docstring:
            problems.append(f"module {module.path} has no docstring")
        for name in _public_names(module):
            if name not in module.members:  # bound by tuple unpacking: a constant
                continue
            target = _target(module.members[name])
            if target.is_module and module is not package:
                continue
            path = f"{module.path}.{name}"
            if (target.is_function or target.is_class) and not target.docstring:
                problems.append(f"{path} ({target.kind.value}) has no docstring")
            if not (
                {path, target.path} & documented
                or module.path in with_members
                or target.path in top_level
                or (target.parent is not None and target.parent.path in with_members)
            ):
                problems.append(f"{path} is in no ::: block of docs/api/")
    return problems


def on_startup(command: str, dirty: bool) -> None:
    logging.getLogger("mkdocs.plugins.griffe").addFilter(_GroupedArgumentsFilter())


def on_pre_build(config: Any) -> None:
    package = griffe.load(PACKAGE, search_paths=[str(ROOT)], resolve_aliases=True)
    for problem in _problems(package, *_documented(ROOT / "docs" / "api")):
        LOG.warning("API reference: %s", problem)
