"""Step time of ``adamw_jax.adamw`` for each optimizer-state format, against its bandwidth bound.

    python benchmarks/state_formats.py [--tensors 8] [--size 1048576] [--repeats 30]

One jitted step (gradients, state and parameters donated) on ``--tensors`` float32 parameters of
``--size`` elements each, for the unfused chain (``fused=False``) and the fused one-pass step
(``fused=True``), both through ``update_and_apply``. Every contender is compiled and warmed
first; then each of ``--repeats`` rounds times one step of every contender in turn (alternating,
in one process, so a busy machine slows all rows alike) and the median is reported.

Bytes per parameter are measured from the state's arrays. A step reads g and θ, writes θ, and
reads and writes the state: ``12 + 2·state`` bytes per parameter (28 with float32 moments, 20
with bf16, ~16 with int8); the bound is that traffic at the bandwidth of an in-place triad
measured in the same run. Peers: torch's AdamW (foreach, float32) and, when it runs here,
bitsandbytes' blockwise 8-bit AdamW (its CPU backend).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import adamw_jax as aw
from adamw_jax import lowbit

FORMATS = {
    "float32": {},
    "bf16": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    "bf16 + SR": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, stochastic_rounding=True),
    "bf16 mu, f16 nu": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.float16),
    "bf16 mu, f16 nu + SR": dict(
        mu_dtype=jnp.bfloat16, nu_dtype=jnp.float16, stochastic_rounding=True
    ),
    "int8": dict(mu_dtype="int8", nu_dtype="int8"),
    "int8 + SR": dict(mu_dtype="int8", nu_dtype="int8", stochastic_rounding=True),
}

Timer = Callable[[], float]  # runs one step, returns its seconds


def jax_contender(kwargs: dict, params: dict, grads: dict, fused: bool) -> tuple[Timer, float]:
    """A timer of one donated ``update_and_apply`` step, and the state's bytes per parameter."""
    optimizer = aw.adamw(1e-3, weight_decay=1e-2, fused=fused, **kwargs)
    step = jax.jit(lambda p, s, g: aw.update_and_apply(optimizer, g, s, p), donate_argnums=(0, 1))
    carry = [jax.tree_util.tree_map(jnp.copy, params)]
    carry.append(optimizer.init(carry[0]))
    bytes_per_parameter = lowbit.state_bytes(carry[1]) / sum(p.size for p in params.values())

    def once() -> float:
        start = time.perf_counter()
        carry[:] = jax.block_until_ready(step(*carry, grads))
        return time.perf_counter() - start

    return once, bytes_per_parameter


def torch_contenders(tensors: int, size: int) -> tuple[dict[str, tuple[Timer, float]], list[str]]:
    """torch AdamW (foreach) and bitsandbytes' AdamW8bit where they run; notes on those that
    do not."""
    contenders, notes = {}, []
    try:
        import torch
    except ImportError as error:
        return contenders, [f"torch peers skipped: {error}"]
    makers = {"torch AdamW foreach (peer)": lambda p: torch.optim.AdamW(p, 1e-3, foreach=True)}
    try:
        import bitsandbytes as bnb

        makers[f"bitsandbytes {bnb.__version__} AdamW8bit (peer)"] = lambda p: bnb.optim.AdamW8bit(
            p, 1e-3
        )
    except Exception as error:  # noqa: BLE001 - any import failure is the finding
        notes.append(f"bitsandbytes not run: {type(error).__name__}: {error}")
    for name, make in makers.items():
        params = [torch.nn.Parameter(torch.randn(size)) for _ in range(tensors)]
        for p in params:
            p.grad = 1e-3 * torch.randn(size)
        try:
            optimizer = make(params)
            optimizer.step()
        except Exception as error:  # noqa: BLE001
            notes.append(f"{name} failed its first step: {type(error).__name__}: {error}")
            continue
        state_bytes = sum(
            v.nbytes
            for s in optimizer.state.values()
            for v in s.values()
            if isinstance(v, torch.Tensor)
        )

        def once(optimizer=optimizer) -> float:
            start = time.perf_counter()
            optimizer.step()
            return time.perf_counter() - start

        contenders[name] = (once, state_bytes / (tensors * size))
    return contenders, notes


def triad_bandwidth(elements: int, repeats: int) -> float:
    """Bytes per second of the in-place triad ``a ← a + s·b`` (12 bytes per element)."""
    triad = jax.jit(lambda a, b: a + 0.5 * b, donate_argnums=0)
    a, b = jnp.ones(elements), jnp.ones(elements)
    a = jax.block_until_ready(triad(a, b))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a = jax.block_until_ready(triad(a, b))
        times.append(time.perf_counter() - start)
    return 12 * elements / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--tensors", type=int, default=8, help="the number of float32 parameter tensors"
    )
    parser.add_argument("--size", type=int, default=2**20, help="elements per tensor")
    parser.add_argument(
        "--repeats",
        type=int,
        default=30,
        help="alternating timed rounds per format (the median is reported)",
    )
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(0), 2 * args.tensors)
    params = {f"w{i}": jax.random.normal(keys[i], (args.size,)) for i in range(args.tensors)}
    grads = {
        f"w{i}": 1e-3 * jax.random.normal(keys[args.tensors + i], (args.size,))
        for i in range(args.tensors)
    }
    count = args.tensors * args.size
    contenders = {
        (name, mode): jax_contender(kwargs, params, grads, mode == "fused")
        for name, kwargs in FORMATS.items()
        for mode in ("chain", "fused")
    }
    peers, notes = torch_contenders(args.tensors, args.size)
    contenders |= {(name, "peer"): timer for name, timer in peers.items()}
    for once, _ in contenders.values():  # compile and warm
        once()
        once()
    times = {key: [] for key in contenders}
    bandwidths = []
    for _ in range(args.repeats):
        bandwidths.append(triad_bandwidth(count, 3))
        for key, (once, _) in contenders.items():
            times[key].append(once())
    bandwidth = statistics.median(bandwidths)
    ms = {key: 1e3 * statistics.median(t) for key, t in times.items()}
    print(
        f"adamw step, {args.tensors} x {args.size:,} float32 parameters, "
        f"{jax.devices()[0].platform}, median of {args.repeats} alternating rounds; "
        f"triad bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    print(
        f"{'state format':<40}{'B/param':>8}{'moved':>7}{'bound ms':>9}{'chain ms':>9}"
        f"{'vs f32':>8}{'fused ms':>9}{'vs f32':>8}{'of bound':>9}"
    )
    chain32, fused32 = ms["float32", "chain"], ms["float32", "fused"]
    for name in FORMATS:
        state = contenders[name, "fused"][1]
        moved = 12 + 2 * state
        bound = 1e3 * moved * count / bandwidth
        chain, fused = ms[name, "chain"], ms[name, "fused"]
        print(
            f"{name:<40}{state:>8.3f}{moved:>7.2f}{bound:>9.2f}{chain:>9.2f}"
            f"{chain / chain32:>7.2f}x{fused:>9.2f}{fused / fused32:>7.2f}x{bound / fused:>8.0%}"
        )
    for name, state in peers.items():
        moved = 12 + 2 * state[1]
        bound = 1e3 * moved * count / bandwidth
        step = ms[name, "peer"]
        print(
            f"{name:<40}{state[1]:>8.3f}{moved:>7.2f}{bound:>9.2f}{'':>9}{'':>8}"
            f"{step:>9.2f}{step / fused32:>7.2f}x{bound / step:>8.0%}"
        )
    for name in FORMATS:
        if name.endswith(" + SR"):
            nearest = name.removesuffix(" + SR")
            print(
                f"{name}: chain {ms[name, 'chain'] / ms[nearest, 'chain']:.2f}x, fused "
                f"{ms[name, 'fused'] / ms[nearest, 'fused']:.2f}x the {nearest} step"
            )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
