"""Every ``python`` code block of the documentation runs as written.

Each block is a whole program (its imports and data included) and runs in a fresh namespace, in
a temporary working directory. A block whose first line is ``# 8 devices`` runs in its own Python
process with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, as a user would run it.
Snippet files (``docs/_snippets/``) are checked through the pages that include them
(``--8<-- "path"`` lines are expanded as pymdownx.snippets does).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(path for path in (ROOT / "docs").rglob("*.md") if "_snippets" not in path.parts)
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)
MULTI_DEVICE = "# 8 devices"
# The files whose python blocks run: the docs pages and the README.
FILES = [*PAGES, ROOT / "README.md"]


def _snippet(reference: str) -> str:
    """The text pymdownx.snippets puts for ``path`` or ``path:section`` (the lines between the
    ``--8<-- [start:section]`` and ``--8<-- [end:section]`` markers)."""
    path, _, section = reference.partition(":")
    text = (ROOT / path).read_text()
    if not section:
        return text
    start, end = f"--8<-- [start:{section}]", f"--8<-- [end:{section}]"
    assert start in text and end in text, f"{path} has no section {section!r}"
    return text.split(start, 1)[1].split("\n", 1)[1].split(end, 1)[0].rsplit("\n", 1)[0]


def expand_snippets(text: str) -> str:
    """``--8<-- "path"`` (or ``"path:section"``) lines replaced by what they include."""
    return SNIPPET.sub(lambda match: _snippet(match.group(1)), text)


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(expand_snippets(path.read_text()))


BLOCKS = [
    pytest.param(path, index, code, id=f"{path.relative_to(ROOT)}[{index}]")
    for path in FILES
    for index, code in enumerate(python_blocks(path))
]


def test_every_page_is_collected():
    """The parametrization sees every page, and the pages have code to run."""
    assert {path.name for path in PAGES} >= {"index.md", "porting.md", "conveniences.md"}
    assert any(path.name == "README.md" for path, *_ in (b.values for b in BLOCKS))
    assert len(BLOCKS) >= 20


@pytest.mark.parametrize(("path", "index", "code"), BLOCKS)
def test_code_block_runs(
    path: Path, index: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    name = f"{path.relative_to(ROOT)}, python block {index}"
    monkeypatch.chdir(tmp_path)
    if code.startswith(MULTI_DEVICE):
        env = dict(
            os.environ,
            XLA_FLAGS="--xla_force_host_platform_device_count=8",
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"
    else:
        exec(compile(code, name, "exec"), {"__name__": "__main__"})


def _load_hook():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_hook_reports_missing_docstrings_and_reference_entries(tmp_path: Path):
    """The strict build's hook warns about a public function without a docstring and a public
    name in no ``:::`` block, and about nothing else."""
    import griffe

    hook = _load_hook()
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""A package."""\nfrom pkg.core import documented, undocumented\n'
        '__all__ = ["documented", "undocumented", "forgotten"]\n'
        'def forgotten():\n    """Documented, but in no ::: block."""\n'
    )
    (package / "core.py").write_text(
        '"""Core."""\ndef documented():\n    """Has one."""\ndef undocumented():\n    pass\n'
    )
    api = tmp_path / "api"
    api.mkdir()
    (api / "index.md").write_text("::: pkg.documented\n\n::: pkg.undocumented\n")
    loaded = griffe.load("pkg", search_paths=[str(tmp_path)], resolve_aliases=True)
    assert hook._problems(loaded, *hook._documented(api)) == [
        "pkg.undocumented (function) has no docstring",
        "pkg.forgotten is in no ::: block of docs/api/",
    ]


def test_api_hook_passes_on_the_package():
    import griffe

    hook = _load_hook()
    package = griffe.load("adamw_jax", search_paths=[str(ROOT)], resolve_aliases=True)
    assert hook._problems(package, *hook._documented(ROOT / "docs" / "api")) == []


def test_rst_simple_tables_become_markdown_tables():
    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "docs" / "_griffe_rst.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Peers:\n\n=====  ========\ntorch  ``a | b``\nkeras  c\n=====  ========\n\nAfter."
    assert module.markdown_tables(text) == (
        "Peers:\n\n|  |  |\n|---|---|\n| torch | ``a \\| b`` |\n| keras | c |\n\nAfter."
    )
    assert module.markdown_literal_markers("the class::\n\n    code\nx = {a: 1}") == (
        "the class:\n\n    code\nx = {a: 1}"
    )
    with_header = "=== ===\nA   B\n=== ===\nx   y\n=== ==="
    assert module.markdown_tables(with_header) == "| A | B |\n|---|---|\n| x | y |"
