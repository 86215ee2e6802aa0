"""A character-level transformer language model on the fables that ship with adamw_jax, trained
with warmup-cosine AdamW, side by side with optax.adamw from the same seed on the same batches.

    python examples/char_transformer.py [--steps 300] [--batch-size 16] [--width 64]
                                        [--layers 2] [--peak-learning-rate 1e-2] [--out DIR]

This is what ``python -m adamw_jax demo`` runs, with every size exposed. The pieces live in the
package so that the installed command works without this folder:

* ``adamw_jax.demo.char_transformer``: the Flax NNX model (pre-norm blocks, causal attention), the
  corpus, random training windows, the decay mask (no decay on biases and norm scales);
* ``adamw_jax.demo.run``: the jitted training step, tokens/s, the loss-curve PNG and the orbax
  checkpoint. The optimizer is

      schedule = adamw_jax.schedules.warmup_cosine_decay_schedule(0, peak, warmup, steps, peak/10)
      adamw_jax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=0.1, mask=decay_mask)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from adamw_jax.demo import run as _demo


def main(
    config: _demo.DemoConfig = _demo.DemoConfig(),
    out: Path = Path("char_transformer_out"),
    progress: bool = True,
) -> list[_demo.TrainingRun]:
    """Train with adamw_jax and optax.adamw; write ``out/loss_curves.png`` and
    ``out/checkpoint``; return both runs."""
    return _demo.run_demo(out, config, progress=progress)


OPTIONS = {  # the DemoConfig fields exposed on the command line, with their help texts
    "steps": "optimizer steps per run",
    "batch_size": "training windows per batch",
    "context": "characters per window (the attention span)",
    "width": "model width (embedding size)",
    "heads": "attention heads per block",
    "layers": "transformer blocks",
    "peak_learning_rate": "learning rate after the linear warmup; cosine decay to a tenth of it",
    "weight_decay": "coupled weight decay λ, on every parameter but biases and norm scales",
    "seed": "model and data seed",
}


def parser() -> argparse.ArgumentParser:
    """The command line: every ``OPTIONS`` field of ``DemoConfig``, and ``--out``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = _demo.DemoConfig()
    for name, help_text in OPTIONS.items():
        default = getattr(defaults, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=type(default), default=default, help=help_text
        )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("char_transformer_out"),
        help="folder for loss_curves.png and checkpoint/",
    )
    return parser


if __name__ == "__main__":
    arguments = vars(parser().parse_args())
    out = arguments.pop("out")
    main(dataclasses.replace(_demo.DemoConfig(), **arguments), out)
