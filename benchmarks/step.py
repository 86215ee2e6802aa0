"""Time one fp32 AdamW step: adamw_jax (fused and not, pytree and flat params) against
optax.adamw (jit + donation), torch AdamW (fused, foreach) and keras AdamW, in one process.

    python benchmarks/step.py            # the three workloads of issue 5 (needs ~12 GB of RAM)
    python benchmarks/step.py --quick    # small shapes, a smoke run

It first measures the in-place triad bandwidth (``a ← a + s·b``, 12 bytes per element, jitted
with donation on the same device), then for each workload builds every contender, times its
compilation (torch: its first step), and runs the steps alternating between contenders, round
after round, so that machine noise hits all of them alike. An AdamW step reads g, p, m, v and
writes p, m, v: 28 bytes per fp32 parameter, so the bound is ``28·n / bandwidth``. Results are
printed and saved as JSON and Markdown under ``benchmarks/results/`` with the date and machine.

Two rows are not optimizers: "dispatch floor" steps return their donated params and state
untouched, with the arrays of optax's step (θ, g, m, v per tensor) or of the fused one (θ, g per
tensor, a few flat moment buffers). They time what JAX costs to pass those arrays in and out,
which no optimizer step over the same pytree can go below.

Three rows are the doors a Flax user takes: an NNX model holding the workload's tensors as its
Params, stepped by ``optimizer.update(model, grads)`` inside ``nnx.jit`` with the model and the
optimizer donated, as Flax's docs write a train step (the gradients given as arrays and made, in
the step, into the ``nnx.State`` of Params that ``nnx.grad`` returns): ``nnx.Optimizer`` with
``optax.adamw`` (the column "/ nnx optax" divides by it), ``nnx.Optimizer`` with
``aw.adamw(fused=True)`` (``update`` + ``apply_updates``) and ``adamw_jax.flax.Optimizer`` with
it (``update_and_apply``, one pass). Besides the step they include what ``nnx.jit`` costs in
Python per call to traverse the model and the optimizer.

Memory: "peak RSS MB" is how much the process's peak resident set grew while a contender was
built and ran its first steps (memory freed by earlier contenders is reused, so it understates
later ones: workloads run smallest first); "XLA temp MB" is the scratch memory XLA allocates
inside one jitted step, zero when the step runs fully in place.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import adamw_jax.flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import adamw_jax as aw  # noqa: E402

BYTES_PER_PARAM = 28
NNX_OPTAX = "nnx.Optimizer, optax.adamw"
HYPER = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2)


def gpt2_shapes(vocab: int = 50257, positions: int = 1024, width: int = 768, layers: int = 12):
    """The 148 tensors of GPT-2 small (124M parameters), or a scaled-down copy."""
    block = [
        (width,),
        (width,),
        (width, 3 * width),
        (3 * width,),
        (width, width),
        (width,),
        (width,),
        (width,),
        (width, 4 * width),
        (4 * width,),
        (4 * width, width),
        (width,),
    ]
    return [(vocab, width), (positions, width)] + block * layers + [(width,), (width,)]


def workloads(quick: bool) -> dict[str, list[tuple[int, ...]]]:
    if quick:
        return {
            "gpt2_small_shapes": gpt2_shapes(512, 64, 32, 2),
            "many_small_tensors": [(256,)] * 40,
            "one_large_tensor": [(1 << 16,)],
        }
    return {
        "many_small_tensors": [(4096,)] * 2000,
        "one_large_tensor": [(1 << 26,)],
        "gpt2_small_shapes": gpt2_shapes(),
    }


# ---------------------------------------------------------------------------------------------
# Memory


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> None:
    """Make VmHWM restart from the current RSS (Linux: ``5`` in ``clear_refs``)."""
    with contextlib.suppress(OSError):  # not Linux, or not allowed: the column reads higher
        Path("/proc/self/clear_refs").write_text("5")


# ---------------------------------------------------------------------------------------------
# Contenders: each is built by a function returning (compile seconds, step callable)


def _jax_contender(optimizer: optax.GradientTransformation, params, grads, apply: Callable | None):
    """jit with params and state donated, as a training loop would run it: ``update`` then
    ``apply(params, updates)``, or with ``apply=None`` ``aw.update_and_apply`` (one pass)."""

    def step(params, state, grads):
        if apply is None:
            return aw.update_and_apply(optimizer, grads, state, params)
        updates, state = optimizer.update(grads, state, params)
        return apply(params, updates), state

    return _donated_runner(step, params, jax.jit(optimizer.init)(params), grads)


def _donated_runner(step: Callable, params, state, grads, keep_unused: bool = False):
    """Compile ``step(params, state, grads) -> (params, state)`` with params and state donated;
    return the compile time, a callable that runs one step in place, and XLA's scratch memory."""
    start = time.perf_counter()
    jitted = jax.jit(step, donate_argnums=(0, 1), keep_unused=keep_unused)
    compiled = jitted.lower(params, state, grads).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_mb = memory.temp_size_in_bytes / 2**20 if memory is not None else None
    carry = [params, state]

    def run() -> None:
        carry[0], carry[1] = compiled(carry[0], carry[1], grads)
        jax.block_until_ready(carry[0])

    return compile_s, run, temp_mb


def _copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


def _dispatch_floor(optimizer: optax.GradientTransformation, params, grads):
    """A jitted step that returns its donated params and state untouched (the gradients kept as
    inputs): what JAX costs to pass the step's arrays in and out, below any optimizer."""
    return _donated_runner(
        lambda p, s, g: (p, s), params, jax.jit(optimizer.init)(params), grads, keep_unused=True
    )


def build_jax_contenders(shapes, params, grads) -> dict[str, Callable]:
    lr, b1, b2, eps, wd = (HYPER[k] for k in ("lr", "b1", "b2", "eps", "weight_decay"))
    flat_params, layout = aw.flat.flatten(params)
    flat_grads = layout.pack(grads)
    return {
        "dispatch floor: identity, optax's arrays": lambda: _dispatch_floor(
            optax.adamw(lr, b1, b2, eps, weight_decay=wd), _copy(params), grads
        ),
        "dispatch floor: identity, fused's arrays": lambda: _dispatch_floor(
            aw.adamw(lr, b1, b2, eps, weight_decay=wd, fused=True), _copy(params), grads
        ),
        "optax.adamw": lambda: _jax_contender(
            optax.adamw(lr, b1, b2, eps, weight_decay=wd), _copy(params), grads, optax.apply_updates
        ),
        "adamw_jax": lambda: _jax_contender(
            aw.adamw(lr, b1, b2, eps, weight_decay=wd), _copy(params), grads, aw.apply_updates
        ),
        # The door every optax loop takes: tx.update, then optax.apply_updates.
        "adamw_jax fused": lambda: _jax_contender(
            aw.adamw(lr, b1, b2, eps, weight_decay=wd, fused=True),
            _copy(params),
            grads,
            optax.apply_updates,
        ),
        "adamw_jax fused, update_and_apply": lambda: _jax_contender(
            aw.adamw(lr, b1, b2, eps, weight_decay=wd, fused=True), _copy(params), grads, None
        ),
        # The variants the one pass runs (AdamC: corrected decay is a scalar of the step).
        "adamw_jax fused AdamC, update_and_apply": lambda: _jax_contender(
            aw.adamw(
                lr,
                b1,
                b2,
                eps,
                weight_decay=wd,
                fused=True,
                weight_decay_mode="corrected",
                peak_learning_rate=lr,
            ),
            _copy(params),
            grads,
            None,
        ),
        "adamw_jax fused, flat params": lambda: _jax_contender(
            aw.adamw(lr, b1, b2, eps, weight_decay=wd, fused=True),
            _copy(flat_params),
            flat_grads,
            None,
        ),
    }


class _NnxTensors(nnx.Module):
    """An NNX model whose parameters are the given arrays."""

    def __init__(self, arrays: list[jax.Array]) -> None:
        self.tensors = nnx.List([nnx.Param(a) for a in arrays])


def _nnx_contender(optimizer_class: type, optimizer: optax.GradientTransformation, params, grads):
    """``optimizer_class(model, optimizer, wrt=nnx.Param).update(model, grads)`` under
    ``nnx.jit`` with model and optimizer donated: compile time, a callable running one step,
    XLA's scratch memory. In a train step the gradients are born inside (``nnx.grad``), so
    ``nnx.jit`` never traverses them: here they come in as a list of arrays (what every other
    row passes) and become, inside the step, the ``nnx.State`` of Params that ``nnx.grad``
    returns."""
    model = _NnxTensors(params)
    trainer = optimizer_class(model, optimizer, wrt=nnx.Param)
    param_tree = jax.tree_util.tree_structure(nnx.state(model, nnx.Param))

    def train_step(model, trainer, grads):
        trainer.update(model, jax.tree_util.tree_unflatten(param_tree, grads))

    step = nnx.jit(train_step, donate_argnums=(0, 1))
    start = time.perf_counter()
    compiled = step.lower(model, trainer, grads).compile()  # the call below reuses it
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()

    def run() -> None:
        step(model, trainer, grads)
        jax.block_until_ready(model.tensors[-1].get_value())  # one program: all outputs at once

    return compile_s, run, memory.temp_size_in_bytes / 2**20 if memory is not None else None


def build_flax_contenders(params, grads) -> dict[str, Callable]:
    lr, b1, b2, eps, wd = (HYPER[k] for k in ("lr", "b1", "b2", "eps", "weight_decay"))
    return {
        NNX_OPTAX: lambda: _nnx_contender(
            nnx.Optimizer, optax.adamw(lr, b1, b2, eps, weight_decay=wd), _copy(params), grads
        ),
        "nnx.Optimizer, adamw_jax fused": lambda: _nnx_contender(
            nnx.Optimizer,
            aw.adamw(lr, b1, b2, eps, weight_decay=wd, fused=True),
            _copy(params),
            grads,
        ),
        "adamw_jax.flax.Optimizer, fused": lambda: _nnx_contender(
            adamw_jax.flax.Optimizer,
            aw.adamw(lr, b1, b2, eps, weight_decay=wd, fused=True),
            _copy(params),
            grads,
        ),
    }


def build_torch_contenders(shapes, grads) -> dict[str, Callable]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    host_grads = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]

    def contender(implementation: str):
        params = [torch.nn.Parameter(torch.ones(s, device=device)) for s in shapes]
        for p, g in zip(params, host_grads):
            p.grad = torch.from_numpy(np.array(g)).to(device)
        optimizer = torch.optim.AdamW(
            params,
            lr=HYPER["lr"],
            betas=(HYPER["b1"], HYPER["b2"]),
            eps=HYPER["eps"],
            weight_decay=HYPER["weight_decay"],
            **{implementation: True},
        )

        def run() -> None:
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()

        start = time.perf_counter()
        run()  # torch has no compilation; its first step allocates the state
        return time.perf_counter() - start, run, None

    return {
        "torch AdamW fused": lambda: contender("fused"),
        "torch AdamW foreach": lambda: contender("foreach"),
    }


def build_keras_contender(params, grads) -> dict[str, Callable]:
    import keras

    def contender():
        variables = [keras.Variable(p) for p in jax.tree_util.tree_leaves(_copy(params))]
        optimizer = keras.optimizers.AdamW(
            learning_rate=HYPER["lr"],
            weight_decay=HYPER["weight_decay"],
            beta_1=HYPER["b1"],
            beta_2=HYPER["b2"],
            epsilon=HYPER["eps"],
        )
        optimizer.build(variables)
        values = [v.value for v in variables]
        state = [v.value for v in optimizer.variables]
        grad_list = jax.tree_util.tree_leaves(grads)

        def step(values, state, grad_list):
            return optimizer.stateless_apply(state, grad_list, values)

        return _donated_runner(step, values, state, grad_list)

    return {"keras AdamW": contender}


# ---------------------------------------------------------------------------------------------
# Measurement


def triad_bandwidth(elements: int, repeats: int) -> float:
    """Bytes per second of the in-place triad ``a ← a + s·b`` (12 bytes per element)."""
    triad = jax.jit(lambda a, b: a + 0.5 * b, donate_argnums=0)
    a, b = jnp.ones([elements], jnp.float32), jnp.ones([elements], jnp.float32)
    a = jax.block_until_ready(triad(a, b))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a = jax.block_until_ready(triad(a, b))
        times.append(time.perf_counter() - start)
    return 12 * elements / min(times)


def run_workload(
    name: str, shapes, rounds: int, bandwidth: float, peers: bool, skip: tuple[str, ...] = ()
) -> dict:
    n = sum(int(np.prod(s)) for s in shapes)
    keys = jax.random.split(jax.random.key(0), len(shapes))
    params = [jnp.ones(s, jnp.float32) for s in shapes]
    grads = [1e-3 * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes)]
    builders = build_jax_contenders(shapes, params, grads) | build_flax_contenders(params, grads)
    if peers:
        builders |= build_torch_contenders(shapes, grads) | build_keras_contender(params, grads)
    # Every contender's arrays stay alive while they alternate (GPT-2 shapes: about 2 GB each).
    builders = {
        label: build for label, build in builders.items() if not any(part in label for part in skip)
    }
    runners, results = {}, {}
    for label, build in builders.items():
        gc.collect()
        rss_before = _status_kib("VmRSS")
        _reset_peak_rss()
        compile_s, run, temp_mb = build()
        for _ in range(2):
            run()
        results[label] = dict(
            compile_s=compile_s,
            times=[],
            xla_temp_mb=temp_mb,
            peak_rss_mb=(_status_kib("VmHWM") - rss_before) / 1024,
        )
        runners[label] = run
    for _ in range(rounds):  # alternate, so that machine noise hits every contender alike
        for label, run in runners.items():
            start = time.perf_counter()
            run()
            results[label]["times"].append(time.perf_counter() - start)
    bound_ms = 1e3 * BYTES_PER_PARAM * n / bandwidth
    for label, result in results.items():
        times = result.pop("times")
        result.update(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times))
        result["fraction_of_bound"] = bound_ms / result["median_ms"]
    for label, result in results.items():
        for peer in ("optax.adamw", "torch AdamW fused", NNX_OPTAX):
            if peer in results:
                result[f"ratio_to_{peer}"] = result["median_ms"] / results[peer]["median_ms"]
    return dict(workload=name, params=n, tensors=len(shapes), bound_ms=bound_ms, results=results)


def format_table(report: dict) -> str:
    lines = [
        f"## {report['workload']}: {report['params']:,} params in {report['tensors']} tensors, "
        f"bound {report['bound_ms']:.1f} ms",
        "",
        "| contender | median ms | min ms | / optax | / torch fused | / nnx optax | of bound "
        "| compile s | peak RSS MB | XLA temp MB |",
        "|---" * 10 + "|",
    ]
    for label, r in report["results"].items():
        ratio = lambda key: f"{r[key]:.2f}x" if key in r else "-"  # noqa: E731
        lines.append(
            f"| {label} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {ratio('ratio_to_optax.adamw')} "
            f"| {ratio('ratio_to_torch AdamW fused')} | {ratio(f'ratio_to_{NNX_OPTAX}')} "
            f"| {100 * r['fraction_of_bound']:.0f}% "
            f"| {r['compile_s']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {'-' if r['xla_temp_mb'] is None else format(r['xla_temp_mb'], '.0f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed steps per contender")
    parser.add_argument("--no-peers", action="store_true", help="skip torch and keras")
    parser.add_argument("--workload", action="append", help="run only these workloads")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="TEXT",
        help="leave out the contenders whose label contains TEXT (to fit in memory)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results",
        help="the folder for the dated .md and .json results",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    device = jax.devices()[0]
    bandwidth = triad_bandwidth(1 << (16 if args.quick else 26), rounds)
    machine = dict(
        host=socket.gethostname(),
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        device=device.device_kind,
        jax=jax.__version__,
        optax=optax.__version__,
    )
    header = (
        f"# AdamW step, {datetime.datetime.now():%Y-%m-%d %H:%M} on {machine['host']} "
        f"({machine['device']}, {machine['cpus']} CPUs)\n\n"
        f"In-place triad bandwidth: {bandwidth / 1e9:.1f} GB/s; bound = "
        f"{BYTES_PER_PARAM} bytes/param at that bandwidth."
    )
    print(header, flush=True)
    reports = []
    for name, shapes in workloads(args.quick).items():
        if args.workload and name not in args.workload:
            continue
        reports.append(
            run_workload(
                name, shapes, rounds, bandwidth, peers=not args.no_peers, skip=tuple(args.skip)
            )
        )
        print("\n" + format_table(reports[-1]), flush=True)
        gc.collect()
    result = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=machine,
        quick=args.quick,
        rounds=rounds,
        triad_gb_s=bandwidth / 1e9,
        workloads=reports,
    )
    stem = f"{datetime.date.today():%Y-%m-%d}_{machine['host']}{'_quick' if args.quick else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{stem}.md").write_text(
        header + "\n\n" + "\n\n".join(format_table(r) for r in reports) + "\n"
    )
    return result


if __name__ == "__main__":
    main()
