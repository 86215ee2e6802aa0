"""The README's code runs as printed and does what its comments say (every block also runs in
``tests/test_docs.py``; these check the claims next to them)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_after(heading: str) -> str:
    section = README.read_text().split(heading, 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def _printed(code: str, name: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, name, "exec"), {"__name__": "__main__"})
    return printed.getvalue()


def test_quick_start_runs_and_converges():
    assert float(_printed(_block_after("## Quick start"), "README quick start")) < 1e-3  # ~1e-4


def test_flax_port_trains_like_nnx_optimizer():
    """The one-line port: the drop-in's loss after 20 steps is nnx.Optimizer's with the same tx
    (fused: float32 rounding of a loss ~1e-2)."""
    code = _block_after("## Port a Flax loop in one line")
    ours = float(_printed(code, "README Flax port"))
    original = code.replace(
        "aw.flax.Optimizer(model, tx, wrt=nnx.Param)", "nnx.Optimizer(model, tx, wrt=nnx.Param)"
    )
    assert original != code
    theirs = float(_printed(original, "README Flax port, nnx.Optimizer"))
    assert abs(ours - theirs) <= 1e-6 * max(1.0, abs(theirs))
    assert ours < 0.05  # it trains: the loss falls from 0.165 at the initial weights


def test_guarded_chain_skips_and_counts_the_poisoned_step():
    code = _block_after("The guarded chain")
    line = _printed(code, "README guarded chain")
    assert re.search(r"consecutive=Array\(1, .*total=Array\(1, ", line), line
    assert line.strip().endswith("16384.0")  # 2**15 halved on the overflow


def test_every_docs_link_of_the_readme_exists():
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", README.read_text()):
        assert (README.parent / target).is_file(), target
