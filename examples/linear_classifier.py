"""The classic AdamW walk-through, in Flax NNX: a linear classifier, 1000 samples, 10 features,
2 classes, batch 32, learning rate 1e-3, weight decay 1e-2, 100 epochs, cross-entropy.

    python examples/linear_classifier.py [--epochs 100] [--out linear_classifier.png]

Prints the loss and accuracy per epoch under a tqdm bar and saves the loss curve as a PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import adamw_jax as aw

SAMPLES, FEATURES, CLASSES, BATCH = 1000, 10, 2, 32


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes whose labels a hidden linear rule decides, 10% of them flipped."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    labels = (features @ rng.normal(size=FEATURES) > 0).astype(np.int32)
    flipped = rng.uniform(size=SAMPLES) < 0.1
    return features, np.where(flipped, 1 - labels, labels)


@nnx.jit
def train_step(model: nnx.Linear, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
    def loss_of(model: nnx.Linear) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_of)(model)
    optimizer.update(model, grads)
    return loss


def train(
    epochs: int = 100,
    out: Path = Path("linear_classifier.png"),
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Train for ``epochs`` epochs, save the loss curve to ``out``; return the epoch losses."""
    features, labels = make_data(seed)
    model = nnx.Linear(FEATURES, CLASSES, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, aw.adamw(learning_rate=1e-3, weight_decay=1e-2), wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    losses, accuracies = [], []
    bar = tqdm(range(epochs), desc="linear classifier", unit="epoch", disable=not progress)
    for _ in bar:
        order = rng.permutation(SAMPLES)
        batch_losses = []
        for start in range(0, SAMPLES, BATCH):
            chosen = order[start : start + BATCH]
            loss = train_step(model, optimizer, features[chosen], labels[chosen])
            batch_losses.append(float(loss) * len(chosen))
        losses.append(sum(batch_losses) / SAMPLES)
        accuracies.append(float(jnp.mean(jnp.argmax(model(features), -1) == labels)))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", accuracy=f"{accuracies[-1]:.3f}")
    plot(np.asarray(losses), np.asarray(accuracies), out)
    return np.asarray(losses)


def plot(losses: np.ndarray, accuracies: np.ndarray, out: Path) -> None:
    figure = Figure(figsize=(7, 4), layout="constrained")
    loss_axis = figure.subplots()
    epochs = np.arange(1, len(losses) + 1)
    loss_axis.plot(epochs, losses, color="tab:blue", linewidth=2, label="training loss")
    loss_axis.set(
        xlabel="epoch",
        ylabel="cross-entropy (nats)",
        title="Linear classifier, adamw_jax.adamw(lr=1e-3, weight_decay=1e-2)",
    )
    loss_axis.grid(alpha=0.3)
    accuracy_axis = loss_axis.twinx()
    accuracy_axis.plot(
        epochs,
        accuracies,
        color="tab:orange",
        linewidth=1.5,
        linestyle="--",
        label="training accuracy",
    )
    accuracy_axis.set_ylabel("accuracy")
    handles = (
        loss_axis.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0]
    )
    loss_axis.legend(handles=handles, loc="center right")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def parser() -> argparse.ArgumentParser:
    """The command line: ``--epochs`` and ``--out``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=100, help="passes over the 1000 samples")
    parser.add_argument(
        "--out", type=Path, default=Path("linear_classifier.png"), help="the loss curve's PNG"
    )
    return parser


if __name__ == "__main__":
    arguments = parser().parse_args()
    epoch_losses = train(arguments.epochs, arguments.out)
    print(f"loss {epoch_losses[0]:.4f} -> {epoch_losses[-1]:.4f}; wrote {arguments.out}")
