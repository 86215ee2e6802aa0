"""Training evidence for low-precision AdamW: the char transformer (``adamw_jax.demo.char_transformer``)
trained from the same seed on the same batches with float32, bf16 and int8 optimizer states, and
with bf16 parameters (stochastic rounding, master weights, plain nearest rounding).

    python benchmarks/lowbit_training.py [--steps 600] [--out docs/lowbit_training.png]

Prints a table of final losses (mean of the last 10% of steps, the same batches for every run)
and their ratio to the float32 run, and writes a PNG of the smoothed curves. The model computes
in float32 in every run: bf16 parameters are only *stored* in bf16, so the runs differ in storage
and rounding alone. The learning rate is low enough (3e-3 down to 3e-4) that late updates fall
below half a bf16 ulp of most weights: the regime where plain bf16 parameters stall.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import adamw_jax as aw  # noqa: E402
from adamw_jax.demo import char_transformer as ct  # noqa: E402
from adamw_jax.demo.run import smoothed  # noqa: E402

# name: (parameter storage dtype, adamw keyword arguments)
RUNS = {
    "float32": (jnp.float32, {}),
    "bf16 state": (jnp.float32, dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)),
    "bf16 state + SR": (
        jnp.float32,
        dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, stochastic_rounding=True),
    ),
    "int8 state": (jnp.float32, dict(mu_dtype="int8", nu_dtype="int8")),
    "bf16 params + SR": (
        jnp.bfloat16,
        dict(mu_dtype=jnp.float32, nu_dtype=jnp.float32, stochastic_rounding=True),
    ),
    "bf16 params + master": (jnp.bfloat16, dict(master_weights=True)),
    "bf16 params, nearest": (jnp.bfloat16, dict(mu_dtype=jnp.float32, nu_dtype=jnp.float32)),
}


def batches(
    steps: int, batch_size: int, context: int, seed: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """The vocabulary size and ``steps`` stacked (inputs, targets) batches of the fables."""
    vocabulary = ct.Vocabulary(ct.load_fables())
    windows = ct.random_windows(vocabulary.encode(ct.load_fables()), batch_size, context, seed)
    inputs, targets = zip(*(next(windows) for _ in range(steps)))
    return len(vocabulary), np.stack(inputs), np.stack(targets)


def train(param_dtype, adamw_kwargs: dict, args: argparse.Namespace, data) -> np.ndarray:
    """The training loss at every step, the whole run one jitted ``lax.scan``."""
    vocabulary_size, inputs, targets = data
    config = ct.ModelConfig(vocabulary_size, args.context, args.width, 4, args.layers)
    graphdef, params = nnx.split(ct.CharTransformer(config, rngs=nnx.Rngs(args.seed)))
    params = jax.tree_util.tree_map(lambda p: p.astype(param_dtype), params)
    schedule = aw.schedules.warmup_cosine_decay_schedule(
        0.0, args.peak_learning_rate, args.steps // 10, args.steps, args.peak_learning_rate / 10
    )
    optimizer = aw.adamw(
        schedule, b1=0.9, b2=0.99, weight_decay=0.1, mask=ct.decay_mask, **adamw_kwargs
    )

    def loss_of(params32, x, y):
        return ct.next_character_loss(nnx.merge(graphdef, params32)(x), y)

    def step(carry, batch):
        params, opt_state = carry
        params32 = jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)
        loss, grads = jax.value_and_grad(loss_of)(params32, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (aw.apply_updates(params, updates), opt_state), loss

    run = jax.jit(lambda p, x, y: jax.lax.scan(step, (p, optimizer.init(p)), (x, y))[1])
    return np.asarray(run(params, inputs, targets))


SMOOTHING = 0.95  # EMA momentum of the plotted per-step losses
TAIL = 0.3  # the right panel: the last 30% of the steps, where the formats part
LINEAR = 0.01  # the right panel's axis is linear within ±0.01% of float32, logarithmic beyond


def plot(curves: dict[str, np.ndarray], final: dict[str, float], out: Path) -> None:
    """Two panels of the smoothed losses (EMA ``SMOOTHING`` of the per-step loss): the whole run,
    and the tail as each run's gap to float32 in %. The runs share seed and batches, so their
    common batch-to-batch noise cancels in the gap and each format's own drift shows, on a
    symmetric log axis. The legend sits below the panels, off the curves."""
    steps = len(curves["float32"])
    start = int((1 - TAIL) * steps)
    lines = {name: smoothed(losses, SMOOTHING) for name, losses in curves.items()}
    gaps = {
        name: 100 * (line[start:] / lines["float32"][start:] - 1) for name, line in lines.items()
    }
    figure, (whole, tail) = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained")
    for index, name in enumerate(lines):
        style = dict(color=f"C{index}", linestyle=("-", "--", "-.", ":")[index % 4], linewidth=1.4)
        whole.plot(lines[name], label=f"{name} (final {final[name]:.4f})", **style)
        tail.plot(np.arange(start, steps), gaps[name], **style)
    whole.set_ylim(min(final.values()) - 0.2, float(np.max(curves["float32"][: steps // 20])))
    whole.axvspan(start, steps, color="0.92", zorder=0, label="the steps of the right panel")
    whole.set(
        xlabel="step",
        ylabel=f"training loss (nats/char), EMA {SMOOTHING}",
        title="the whole run",
    )
    # Symmetric log: gaps of 0.01% and of 10% are read on one axis, linear within ±LINEAR.
    tail.set_yscale("symlog", linthresh=LINEAR)
    tail.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:+g}%"))
    tail.set(
        xlabel="step",
        ylabel="loss vs float32 (both smoothed; symmetric log axis)",
        title=f"the last {TAIL:.0%} of the steps: the gap to float32",
    )
    for axis in (whole, tail):
        axis.grid(alpha=0.3)
    figure.suptitle(
        "Char transformer: low-precision AdamW states and bf16 parameters (same seed, same batches)"
    )
    figure.legend(loc="outside lower center", ncols=4, fontsize="small")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=600, help="training steps per format")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    parser.add_argument("--context", type=int, default=64, help="characters per sequence")
    parser.add_argument("--width", type=int, default=64, help="model width")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers")
    parser.add_argument(
        "--peak-learning-rate", type=float, default=3e-3, help="peak of the warmup-cosine schedule"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="initialisation and batch seed, the same for every format",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("docs/lowbit_training.png"), help="where to write the plot"
    )
    args = parser.parse_args()
    data = batches(args.steps, args.batch_size, args.context, args.seed)
    curves, seconds = {}, {}
    for name, (param_dtype, kwargs) in RUNS.items():
        start = time.perf_counter()
        curves[name] = train(param_dtype, kwargs, args, data)
        seconds[name] = time.perf_counter() - start
    tail = max(1, args.steps // 10)
    final = {name: float(np.mean(losses[-tail:])) for name, losses in curves.items()}
    baseline = final["float32"]
    print(
        f"char transformer, {args.steps} steps, batch {args.batch_size}x{args.context}, "
        f"width {args.width}, {args.layers} layers, lr {args.peak_learning_rate:g} warmup-cosine"
    )
    print(f"{'run':<24}{'final loss':>12}{'vs float32':>12}{'first loss':>12}{'seconds':>9}")
    for name, value in final.items():
        print(
            f"{name:<24}{value:>12.4f}{100 * (value / baseline - 1):>+11.2f}%"
            f"{curves[name][0]:>12.4f}{seconds[name]:>9.1f}"
        )
    plot(curves, final, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
