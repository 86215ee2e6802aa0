"""``python -m adamw_jax demo``: train the character transformer with adamw_jax and with
optax.adamw from the same seed on the same batches, plot both loss curves, save a checkpoint.

Both optimizers get the same hyperparameters: a linear warmup to ``peak_learning_rate``, cosine
decay to a tenth of it, ``β = (0.9, 0.99)``, coupled weight decay ``λ`` on every parameter but
biases and norm scales. Their curves lie on top of each other: the two are the same algorithm,
and differ only by float32 rounding (adamw_jax forms ``1 - β^t`` without cancellation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

import adamw_jax as aw
from adamw_jax.demo import char_transformer as ct


@dataclass(frozen=True)
class DemoConfig:
    """Everything that defines a demo run; the defaults take about half a minute on 2 CPU cores
    (27 s measured, both optimizers, compilation included)."""

    steps: int = 300
    batch_size: int = 16
    context: int = 64
    width: int = 64
    heads: int = 4
    layers: int = 2
    peak_learning_rate: float = 1e-2
    warmup_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.99
    weight_decay: float = 0.1
    held_out_fraction: float = 0.1
    held_out_batches: int = 8
    sample_length: int = 200
    seed: int = 0

    @property
    def warmup_steps(self) -> int:
        return max(1, int(self.warmup_fraction * self.steps))

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context


@dataclass
class TrainingRun:
    """One optimizer's run: the loss after each step and the final state."""

    name: str
    losses: np.ndarray
    held_out_loss: float
    tokens_per_second: float
    graphdef: nnx.GraphDef
    params: nnx.State
    opt_state: optax.OptState
    learning_rates: np.ndarray = field(repr=False)


def optimizers(config: DemoConfig) -> dict[str, tuple[optax.GradientTransformation, Callable]]:
    """The two optimizers compared, each with its library's own warmup-cosine schedule."""
    arguments = (
        0.0,
        config.peak_learning_rate,
        config.warmup_steps,
        config.steps,
        config.peak_learning_rate / 10,
    )
    ours = aw.schedules.warmup_cosine_decay_schedule(*arguments)
    theirs = optax.warmup_cosine_decay_schedule(*arguments)
    b1, b2, eps, decay, mask = config.b1, config.b2, 1e-8, config.weight_decay, ct.decay_mask
    return {
        "adamw_jax": (aw.adamw(ours, b1, b2, eps, weight_decay=decay, mask=mask), ours),
        "optax.adamw": (optax.adamw(theirs, b1, b2, eps, weight_decay=decay, mask=mask), theirs),
    }


@dataclass
class Task:
    """What both optimizers share: the data, the model's structure and its initial weights."""

    vocabulary: ct.Vocabulary
    train_tokens: np.ndarray
    held_out_tokens: np.ndarray
    graphdef: nnx.GraphDef
    initial_params: nnx.State


def prepare(config: DemoConfig) -> Task:
    """Encode the corpus (held-out = its last ``held_out_fraction``) and initialise the model
    from ``config.seed``."""
    text = ct.load_fables()
    vocabulary = ct.Vocabulary(text)
    tokens = vocabulary.encode(text)
    cut = int(len(tokens) * (1 - config.held_out_fraction))
    model_config = ct.ModelConfig(
        len(vocabulary), config.context, config.width, config.heads, config.layers
    )

    def fresh_model() -> ct.CharTransformer:
        return ct.CharTransformer(model_config, rngs=nnx.Rngs(config.seed))

    # Jitted: one compilation instead of one per initializer op.
    initial_params = jax.jit(lambda: nnx.state(fresh_model()))()
    return Task(
        vocabulary,
        tokens[:cut],
        tokens[cut:],
        nnx.graphdef(nnx.eval_shape(fresh_model)),
        initial_params,
    )


def loss_of(
    graphdef: nnx.GraphDef, params: nnx.State, inputs: jax.Array, targets: jax.Array
) -> jax.Array:
    """The model's mean next-character loss on one batch."""
    return ct.next_character_loss(nnx.merge(graphdef, params)(inputs), targets)


evaluate = jax.jit(loss_of, static_argnums=0)


def train(
    name: str,
    optimizer: optax.GradientTransformation,
    schedule: Callable,
    config: DemoConfig,
    task: Task,
    *,
    progress: bool = True,
) -> TrainingRun:
    """Train the task's initial model for ``config.steps`` steps of ``optimizer``."""

    @jax.jit
    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_of, argnums=1)(task.graphdef, params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batches = ct.random_windows(task.train_tokens, config.batch_size, config.context, config.seed)
    params = task.initial_params
    opt_state = jax.jit(optimizer.init)(params)
    losses = np.empty(config.steps)
    bar = tqdm(
        range(config.steps),
        desc=f"{name:>11}",
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    for index in bar:
        params, opt_state, loss = step(params, opt_state, *next(batches))
        losses[index] = float(loss)
        if index == 0:  # the first step compiles; throughput counts the rest
            start = time.perf_counter()
        elif index % 10 == 0 or index == config.steps - 1:
            rate = index * config.tokens_per_step / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{losses[index]:.3f}", tokens_per_s=f"{rate:,.0f}")
    elapsed = time.perf_counter() - start
    held_out = ct.random_windows(
        task.held_out_tokens, config.batch_size, config.context, seed=12345
    )
    held_out_loss = np.mean(
        [
            float(evaluate(task.graphdef, params, *next(held_out)))
            for _ in range(config.held_out_batches)
        ]
    )
    return TrainingRun(
        name=name,
        losses=losses,
        held_out_loss=float(held_out_loss),
        tokens_per_second=(config.steps - 1) * config.tokens_per_step / max(elapsed, 1e-9),
        graphdef=task.graphdef,
        params=params,
        opt_state=opt_state,
        learning_rates=np.asarray(jax.jit(jax.vmap(schedule))(np.arange(config.steps))),
    )


SMOOTHING = 0.9  # the demo plot's EMA momentum for the per-step loss


def smoothed(values: np.ndarray, momentum: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average, to read a noisy loss curve."""
    average, out = 0.0, np.empty_like(values)
    for index, value in enumerate(values):
        average = momentum * average + (1 - momentum) * value
        out[index] = average / (1 - momentum ** (index + 1))
    return out


def plot_losses(runs: list[TrainingRun], path: Path, config: DemoConfig) -> Path:
    """Loss curves of every run (per step, and smoothed: ``smoothed(losses, SMOOTHING)``), their
    gap, and the learning rate, as PNG; the legend sits below the axes, off the curves."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    figure = Figure(figsize=(12, 5.0), layout="constrained")
    curves, gap = figure.subplots(1, 2)
    steps = np.arange(1, config.steps + 1)
    colors = ("tab:blue", "tab:orange")
    for run, color, style in zip(runs, colors, ("-", "--")):
        curves.plot(
            steps,
            run.losses,
            color=color,
            alpha=0.2,
            linewidth=0.8,
            label=f"{run.name}, per-step loss",
        )
        curves.plot(
            steps,
            smoothed(run.losses, SMOOTHING),
            color=color,
            linestyle=style,
            linewidth=2,
            label=f"{run.name}, smoothed: EMA {SMOOTHING} of the per-step loss "
            f"(held-out loss {run.held_out_loss:.3f})",
        )
    curves.set(
        xlabel="step",
        ylabel="training loss (nats / character)",
        title=f"Character transformer on the shipped fables, seed {config.seed}\n"
        f"thick: EMA {SMOOTHING} of the per-step loss (thin)",
    )
    curves.grid(alpha=0.3)
    rate_axis = curves.twinx()
    rate_axis.plot(
        steps,
        runs[0].learning_rates,
        color="gray",
        linewidth=1,
        linestyle=":",
        label="learning rate (right axis)",
    )
    rate_axis.set_ylabel("learning rate (dotted)", color="gray")
    rate_axis.tick_params(axis="y", colors="gray")
    handles = curves.get_legend_handles_labels()[0] + rate_axis.get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="outside lower left", ncols=3, fontsize="small")
    difference = np.abs(runs[0].losses - runs[1].losses)
    differs = difference > 0
    gap.semilogy(steps[differs], difference[differs], ".", color="tab:green", markersize=4)
    gap.set(
        xlabel="step",
        ylabel=f"|loss {runs[0].name} − loss {runs[1].name}|",
        title=f"Equal at {np.sum(~differs)} of {config.steps} steps, elsewhere float32 "
        "rounding apart",
    )
    gap.grid(alpha=0.3, which="both")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def save_checkpoint(directory: Path, params: Any, opt_state: Any) -> Path:
    """Write ``{"params", "opt_state"}`` with orbax (overwriting ``directory``)."""
    directory = directory.resolve()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, {"params": params, "opt_state": opt_state}, force=True)
        checkpointer.wait_until_finished()
    return directory


def restore_checkpoint(directory: Path, like: Any) -> Any:
    """Read a checkpoint written by ``save_checkpoint`` into the structure of ``like``."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory.resolve(), abstract)


def run_demo(
    out: Path,
    config: DemoConfig = DemoConfig(),
    *,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> list[TrainingRun]:
    """Train with both optimizers, then write ``loss_curves.png`` and ``checkpoint/`` into
    ``out`` and report the numbers and a sample of generated text."""
    out = Path(out)
    task = prepare(config)
    report(
        f"adamw_jax demo: {config.steps} steps of a {config.layers}-layer character "
        f"transformer (width {config.width}) on {len(task.train_tokens):,} characters; "
        f"{jax.device_count()} {jax.default_backend()} device(s)."
    )
    runs = [
        train(name, optimizer, schedule, config, task, progress=progress)
        for name, (optimizer, schedule) in optimizers(config).items()
    ]
    for run in runs:
        report(
            f"{run.name:>11}: loss {run.losses[0]:.3f} -> {run.losses[-1]:.3f} "
            f"(held-out {run.held_out_loss:.3f}), {run.tokens_per_second:,.0f} tokens/s"
        )
    report(
        f"largest |loss difference| between the two: "
        f"{np.max(np.abs(runs[0].losses - runs[1].losses)):.2e}"
    )
    plot = plot_losses(runs, out / "loss_curves.png", config)
    ours = runs[0]
    checkpoint = save_checkpoint(out / "checkpoint", ours.params, ours.opt_state)
    report(f"wrote {plot} and {checkpoint}")
    sample = ct.sample_text(
        ours.graphdef,
        ours.params,
        task.vocabulary,
        "1. The ",
        length=config.sample_length,
        context=config.context,
        seed=config.seed,
    )
    report("sample from the adamw_jax model:\n" + sample)
    return runs
