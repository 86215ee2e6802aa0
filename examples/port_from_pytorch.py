"""A PyTorch training loop and its line-by-line port to adamw_jax + Flax NNX: same model, same
initial weights, same batches, same AdamW and cosine schedule, so the same losses.

    python examples/port_from_pytorch.py [--steps 200] [--out port_from_pytorch.png]

The translation table (each ``# torch:`` comment in ``train_flax`` is the line it replaces):

    torch.optim.AdamW(params, lr, betas=(b1, b2), eps, weight_decay)
        -> nnx.Optimizer(model, adamw_jax.adamw(schedule, b1, b2, eps, weight_decay=weight_decay),
                         wrt=nnx.Param)
    CosineAnnealingLR(optimizer, T_max, eta_min)   (stepped after every optimizer.step())
        -> adamw_jax.schedules.cosine_decay_schedule(lr, T_max, alpha=eta_min / lr)
    optimizer.zero_grad(); loss.backward(); optimizer.step(); scheduler.step()
        -> grads = nnx.grad(loss_fn)(model); optimizer.update(model, grads)
    nn.Linear(i, o).weight  (shape (o, i))  -> nnx.Linear(i, o).kernel  (shape (i, o))

Both sides run when torch is installed; without it only the port runs, and a notice on stderr
says how to install torch (``pip install torch==2.13.0``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

import adamw_jax as aw

try:
    import torch
except ImportError:  # the port runs on its own; the comparison needs torch
    torch = None

TORCH_MISSING = (
    "torch is not installed: the torch.optim.AdamW side is skipped and only the port runs. "
    "To compare both: pip install torch==2.13.0 "
    "(CPU build: --index-url https://download.pytorch.org/whl/cpu)"
)
FEATURES, HIDDEN, SAMPLES, BATCH = 8, 32, 256, 32
LR, BETAS, EPS, WEIGHT_DECAY, ETA_MIN = 1e-2, (0.9, 0.999), 1e-8, 1e-2, 1e-4


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth nonlinear regression target with a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    y = np.sin(x @ rng.normal(size=(FEATURES, 1)) / np.sqrt(FEATURES) * 2)
    y = y + 0.05 * rng.normal(size=(SAMPLES, 1))
    return x, y.astype(np.float32)


def batch_indices(steps: int, seed: int = 0) -> list[np.ndarray]:
    """The sample indices of every step, shared by both loops."""
    rng = np.random.default_rng(seed)
    return [rng.choice(SAMPLES, BATCH, replace=False) for _ in range(steps)]


def initial_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch's default initialisation of the MLP, as NumPy arrays in PyTorch's layout."""
    rng = np.random.default_rng(seed)

    def uniform(fan_in: int, shape: tuple[int, ...]) -> np.ndarray:
        bound = 1 / np.sqrt(fan_in)  # nn.Linear.reset_parameters
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    return {
        "0.weight": uniform(FEATURES, (HIDDEN, FEATURES)),
        "0.bias": uniform(FEATURES, (HIDDEN,)),
        "2.weight": uniform(HIDDEN, (1, HIDDEN)),
        "2.bias": uniform(HIDDEN, (1,)),
    }


def train_torch(steps: int, seed: int = 0) -> list[float]:
    """The original PyTorch loop."""
    x, y = (torch.from_numpy(a) for a in make_data(seed))
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1)
    )
    model.load_state_dict({k: torch.from_numpy(v) for k, v in initial_weights(seed).items()})
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=ETA_MIN)
    losses = []
    for chosen in batch_indices(steps, seed):
        index = torch.from_numpy(chosen)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


class MLP(nnx.Module):
    """torch.nn.Sequential(Linear(8, 32), Tanh(), Linear(32, 1)) in Flax NNX."""

    def __init__(self, weights: dict[str, np.ndarray], rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(FEATURES, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 1, rngs=rngs)
        for layer, prefix in ((self.hidden, "0"), (self.out, "2")):
            layer.kernel[...] = jnp.asarray(weights[f"{prefix}.weight"].T)  # (out, in) -> (in, out)
            layer.bias[...] = jnp.asarray(weights[f"{prefix}.bias"])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x)))


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss_fn(model: MLP) -> jax.Array:
        return jnp.mean((model(x) - y) ** 2)  # torch: F.mse_loss(model(x), y)

    loss, grads = nnx.value_and_grad(loss_fn)(model)  # torch: zero_grad(); loss.backward()
    optimizer.update(model, grads)  # torch: optimizer.step(); scheduler.step()
    return loss


def train_flax(steps: int, seed: int = 0) -> list[float]:
    """The port: one adamw_jax line per PyTorch line."""
    x, y = make_data(seed)
    model = MLP(initial_weights(seed), nnx.Rngs(seed))  # torch: model.load_state_dict(...)
    # torch: CosineAnnealingLR(optimizer, T_max=steps, eta_min=ETA_MIN)
    schedule = aw.schedules.cosine_decay_schedule(LR, steps, alpha=ETA_MIN / LR)
    # torch: torch.optim.AdamW(model.parameters(), lr, betas, eps, weight_decay)
    optimizer = nnx.Optimizer(
        model,
        aw.adamw(schedule, BETAS[0], BETAS[1], EPS, weight_decay=WEIGHT_DECAY),
        wrt=nnx.Param,
    )
    return [
        float(train_step(model, optimizer, x[chosen], y[chosen]))
        for chosen in batch_indices(steps, seed)
    ]


def plot(curves: dict[str, list[float]], out: Path) -> None:
    figure = Figure(figsize=(7, 4), layout="constrained")
    axis = figure.subplots()
    for (name, losses), style in zip(curves.items(), ("-", "--")):
        axis.semilogy(
            np.arange(1, len(losses) + 1), losses, linestyle=style, linewidth=2, label=name
        )
    axis.set(
        xlabel="step",
        ylabel="mean squared error",
        title="PyTorch AdamW and its adamw_jax port, same weights and batches",
    )
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def main(steps: int = 200, out: Path = Path("port_from_pytorch.png")) -> dict[str, list[float]]:
    """Run the port (and PyTorch when installed), plot the losses, return them by name."""
    curves = {"adamw_jax + Flax NNX": train_flax(steps)}
    if torch is None:
        print(TORCH_MISSING, file=sys.stderr)
    else:
        curves = {"torch.optim.AdamW": train_torch(steps), **curves}
    plot(curves, out)
    return curves


def parser() -> argparse.ArgumentParser:
    """The command line: ``--steps`` and ``--out``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=int, default=200, help="optimizer steps on each side (cosine T_max)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("port_from_pytorch.png"), help="the loss curves' PNG"
    )
    return parser


if __name__ == "__main__":
    arguments = parser().parse_args()
    results = main(arguments.steps, arguments.out)
    for name, losses in results.items():
        print(f"{name:>22}: loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    if len(results) == 2:
        ours, theirs = (
            np.asarray(results["adamw_jax + Flax NNX"]),
            np.asarray(results["torch.optim.AdamW"]),
        )
        print(f"largest relative loss difference: {np.max(np.abs(ours - theirs) / theirs):.2e}")
    print(f"wrote {arguments.out}")
