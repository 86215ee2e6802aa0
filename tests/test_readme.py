"""The README's quick start runs as printed and does what its comment says."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_and_converges():
    text = README.read_text()
    code = text.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README quick start", "exec"), {})
    assert float(printed.getvalue()) < 1e-3  # the comment says ~1e-4
