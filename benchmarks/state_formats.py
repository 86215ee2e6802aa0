"""Step time of ``adamw_jax.adamw`` for each optimizer-state format, as a ratio to float32.

    python benchmarks/state_formats.py [--tensors 8] [--size 1048576] [--repeats 20]

One jitted step (gradients, state and parameters donated) on ``--tensors`` float32 parameters of
``--size`` elements each; the median of ``--repeats`` timed steps after a warm-up, for the
unfused chain (``update`` + ``apply_updates``) and the fused one-pass step (``fused=True`` with
``update_and_apply``). Also prints the state bytes per parameter measured from the arrays. Fewer
bytes moved mean a faster step where the step is memory-bound; in XLA on CPU the encoding
arithmetic can dominate, while the native CPU kernel stores bfloat16 moments in the same pass.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import adamw_jax as aw
from adamw_jax import lowbit

FORMATS = {
    "float32": {},
    "bf16": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    "bf16 + SR": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, stochastic_rounding=True),
    "bf16 mu, f16 nu": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.float16),
    "int8": dict(mu_dtype="int8", nu_dtype="int8"),
    "int8 + SR": dict(mu_dtype="int8", nu_dtype="int8", stochastic_rounding=True),
}


def step_seconds(kwargs: dict, params: dict, grads: dict, repeats: int, fused: bool
                 ) -> tuple[float, float]:
    """Median seconds of one optimizer step, and the state's bytes per parameter."""
    optimizer = aw.adamw(1e-3, weight_decay=1e-2, fused=fused, **kwargs)

    def step(params, state, grads):
        return aw.update_and_apply(optimizer, grads, state, params)

    step = jax.jit(step, donate_argnums=(0, 1))
    params = jax.tree_util.tree_map(jnp.copy, params)
    state = optimizer.init(params)
    bytes_per_parameter = lowbit.state_bytes(state) / sum(p.size for p in params.values())
    params, state = step(params, state, grads)  # compile
    jax.block_until_ready(params)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        params, state = step(params, state, grads)
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), bytes_per_parameter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--size", type=int, default=2**20)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(0), 2 * args.tensors)
    params = {f"w{i}": jax.random.normal(keys[i], (args.size,)) for i in range(args.tensors)}
    grads = {f"w{i}": 1e-3 * jax.random.normal(keys[args.tensors + i], (args.size,))
             for i in range(args.tensors)}
    print(f"adamw step, {args.tensors} x {args.size:,} float32 parameters, {jax.devices()[0].platform}")
    print(f"{'state format':<18}{'bytes/param':>12}{'chain ms':>10}{'vs float32':>12}"
          f"{'fused ms':>10}{'vs float32':>12}")
    baseline = None
    for name, kwargs in FORMATS.items():
        chain, bytes_per_parameter = step_seconds(kwargs, params, grads, args.repeats, False)
        fused, _ = step_seconds(kwargs, params, grads, args.repeats, True)
        baseline = baseline or chain
        print(f"{name:<18}{bytes_per_parameter:>12.3f}{1e3 * chain:>10.2f}{chain / baseline:>11.2f}x"
              f"{1e3 * fused:>10.2f}{fused / baseline:>11.2f}x")


if __name__ == "__main__":
    main()
