"""The AdamW variants on the char-transformer demo: plain AdamW and each variant trained from the
same seed on the same batches, with the demo's warmup-cosine schedule and hyperparameters.

    python benchmarks/variants_training.py [--steps 300] [--out docs/variants_training.png]

Prints the final training loss (mean of the last 10% of steps) and the held-out loss of each
run (schedule-free AdamW evaluated at its averaged parameters ``x``), saves them as JSON next to
the PNG of the smoothed loss curves.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import optax

import adamw_jax as aw
from adamw_jax.demo import char_transformer as ct
from adamw_jax.demo import run as demo


def variants(config: demo.DemoConfig) -> dict[str, optax.GradientTransformation]:
    peak = config.peak_learning_rate
    schedule = aw.schedules.warmup_cosine_decay_schedule(
        0.0, peak, config.warmup_steps, config.steps, peak / 10
    )
    hyper = dict(b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=ct.decay_mask)
    adamw = lambda **kw: aw.adamw(schedule, **hyper, **kw)  # noqa: E731
    return {
        "AdamW": adamw(),
        "C-AdamW (cautious)": adamw(cautious=True),
        "cautious weight decay": adamw(cautious_weight_decay=True),
        "StableAdamW (rms clip 1)": adamw(rms_clip_threshold=1.0),
        "Adam-atan2": adamw(eps_mode="atan2"),
        "AdamC (corrected decay)": adamw(weight_decay_mode="corrected", peak_learning_rate=peak),
        "ADOPT": aw.adopt(
            schedule, config.b1, 0.9999, weight_decay=config.weight_decay, mask=ct.decay_mask
        ),
        "AdEMAMix": aw.ademamix(
            schedule,
            config.b1,
            config.b2,
            b3=optax.linear_schedule(config.b1, 0.999, config.steps // 2),
            alpha=optax.linear_schedule(0.0, 5.0, config.steps // 2),
            weight_decay=config.weight_decay,
            mask=ct.decay_mask,
        ),
        "schedule-free AdamW": aw.schedule_free_adamw(
            5 * peak, config.warmup_steps, config.b1, config.b2, weight_decay=0.01
        ),
        "AdamW + skip loss spikes": aw.skip_loss_spikes(adamw(), threshold=6.0, window=50),
    }


def train(
    optimizer: optax.GradientTransformation,
    config: demo.DemoConfig,
    task: demo.Task,
    eval_params=lambda state, params: params,
) -> tuple[np.ndarray, float]:
    """The training loss at every step (same batches for every optimizer) and the held-out
    loss of ``eval_params(state, params)``."""

    @jax.jit
    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(demo.loss_of, argnums=1)(
            task.graphdef, params, inputs, targets
        )
        updates, opt_state = optimizer.update(grads, opt_state, params, value=loss)
        return optax.apply_updates(params, updates), opt_state, loss

    batches = ct.random_windows(task.train_tokens, config.batch_size, config.context, config.seed)
    params, opt_state = task.initial_params, jax.jit(optimizer.init)(task.initial_params)
    losses = np.empty(config.steps)
    for index in range(config.steps):
        params, opt_state, loss = step(params, opt_state, *next(batches))
        losses[index] = float(loss)
    held_out = ct.random_windows(
        task.held_out_tokens, config.batch_size, config.context, seed=12345
    )
    evaluated = eval_params(opt_state, params)
    held = np.mean(
        [
            float(demo.evaluate(task.graphdef, evaluated, *next(held_out)))
            for _ in range(config.held_out_batches)
        ]
    )
    return losses, float(held)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps per variant")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/variants_training.png"),
        help="where to write the loss-curve plot",
    )
    args = parser.parse_args()
    config = replace(demo.DemoConfig(), steps=args.steps)
    task = demo.prepare(config)
    results = {}
    for name, optimizer in variants(config).items():
        eval_params = (
            aw.schedule_free_eval_params
            if "schedule-free" in name
            else (lambda state, params: params)
        )
        losses, held = train(optimizer, config, task, eval_params)
        tail = float(np.mean(losses[-max(1, config.steps // 10) :]))
        results[name] = dict(final_training_loss=tail, held_out_loss=held, losses=losses.tolist())
        print(f"{name:>28}: final training loss {tail:.4f}, held-out {held:.4f}", flush=True)

    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 5.5), layout="constrained")
    axis = figure.subplots()
    for name, result in results.items():
        axis.plot(
            np.arange(1, config.steps + 1),
            demo.smoothed(np.array(result["losses"])),
            linewidth=1.6,
            linestyle="-" if name == "AdamW" else "--",
            label=f"{name} (held-out {result['held_out_loss']:.3f})",
        )
    axis.set(
        xlabel="step",
        ylabel="training loss (nats / character, smoothed)",
        title=f"AdamW variants, char transformer, seed {config.seed}, same batches",
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    args.out.with_suffix(".json").write_text(
        json.dumps(dict(steps=config.steps, seed=config.seed, runs=results), indent=1)
    )
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
