"""Command line: ``python -m adamw_jax demo [--steps N] [--out DIR]`` (also ``adamw-jax demo``).

Trains a small character transformer on the shipped fables with adamw_jax and with optax.adamw
(same seed, same batches; about half a minute on 2 CPU cores with the defaults), shows a
progress bar with loss and tokens/s, and writes ``DIR/loss_curves.png`` and an orbax checkpoint
``DIR/checkpoint``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def _step_count(text: str) -> int:
    """``--steps``: at least 2, since the first step compiles and tokens/s times the rest."""
    if not text.strip().isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of optimizer steps >= 2, got {text!r}; e.g. --steps 300."
        )
    return int(text)


def parser() -> argparse.ArgumentParser:
    """The ``adamw-jax`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="adamw-jax",
        description="adamw_jax command line: 'adamw-jax demo' trains a small "
        "character transformer with adamw_jax and optax.adamw and plots both.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a character transformer with adamw_jax and optax.adamw, plot both",
        description="Train a small character transformer on the shipped fables with adamw_jax "
        "and with optax.adamw (same seed, same batches; about half a minute on 2 CPU cores with "
        "the defaults), plot both loss curves and save an orbax checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument(
        "--steps",
        type=_step_count,
        default=300,
        help="optimizer steps per run (at least 2: the first one compiles)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("adamw_jax_demo"),
        help="folder for loss_curves.png and checkpoint/",
    )
    demo.add_argument("--seed", type=int, default=0, help="model and data seed")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m adamw_jax`` and of the ``adamw-jax`` script."""
    command_line = parser()
    arguments = command_line.parse_args(argv)
    try:  # imported here so that --help answers at once
        from adamw_jax.demo import run as _demo
    except ModuleNotFoundError as error:
        command_line.exit(
            2,
            f"adamw-jax demo needs the package {error.name!r}: pip install 'adamw_jax[examples]'\n",
        )

    config = _demo.DemoConfig(steps=arguments.steps, seed=arguments.seed)
    _demo.run_demo(arguments.out, config, progress=not arguments.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
