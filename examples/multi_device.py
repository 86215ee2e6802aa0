"""Sharded AdamW on 8 devices: data parallel, + ZeRO-1, and a 2-D data x model mesh.

    python examples/multi_device.py [--steps 20]   # 8 CPU devices are forced unless XLA_FLAGS is set

The recipe is the same for every layout:

1. choose the parameters' shardings on a mesh (here: replicated, or the MLP's hidden dimension
   split over "model");
2. ``aw.state_shardings(jax.eval_shape(opt.init, params), param_shardings, zero_axis=...)``
   gives the optimizer state's shardings; ``zero_axis="data"`` also splits the moments over
   the data-parallel devices (ZeRO-1);
3. ``jax.jit(opt.init, out_shardings=...)`` creates the state in place, and the train step is
   jitted with these in/out shardings: XLA inserts the all-reduce of the gradients and, for
   ZeRO-1, the all-gather of the updates.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import adamw_jax as aw  # noqa: E402

WIDTH, HIDDEN, BATCH, STEPS = 64, 256, 128, 20
OPTIMIZER = aw.adamw(3e-3, weight_decay=1e-2)
# Megatron-style split of the MLP over "model": first kernel by columns, second by rows.
MODEL_PARALLEL = {
    "hidden_kernel": P(None, "model"),
    "hidden_bias": P("model"),
    "out_kernel": P("model", None),
}
LAYOUTS = {  # name: (mesh shape, axis names, parameter specs, zero_axis)
    "data parallel": ((8,), ("data",), {}, None),
    "data parallel + ZeRO-1": ((8,), ("data",), {}, "data"),
    "2-D data x model + ZeRO-1": ((2, 4), ("data", "model"), MODEL_PARALLEL, "data"),
}


def init_params(seed: int = 0) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "hidden_kernel": jax.random.normal(k1, (WIDTH, HIDDEN)) / np.sqrt(WIDTH),
        "hidden_bias": jnp.zeros(HIDDEN),
        "out_kernel": jax.random.normal(k2, (HIDDEN, WIDTH)) / np.sqrt(HIDDEN),
        "out_bias": jnp.zeros(WIDTH),
    }


def batch_at(step: int) -> tuple[jax.Array, jax.Array]:
    """A denoising task: recover x from a noisy, squashed copy."""
    x = jax.random.normal(jax.random.key(1000 + step), (BATCH, WIDTH))
    noisy = jnp.tanh(x + 0.3 * jax.random.normal(jax.random.key(2000 + step), x.shape))
    return noisy, x


def loss(params, batch):
    inputs, targets = batch
    hidden = jax.nn.gelu(inputs @ params["hidden_kernel"] + params["hidden_bias"])
    return jnp.mean((hidden @ params["out_kernel"] + params["out_bias"] - targets) ** 2)


def train_step(params, state, batch):
    value, grads = jax.value_and_grad(loss)(params, batch)
    updates, state = OPTIMIZER.update(grads, state, params)
    return aw.apply_updates(params, updates), state, value


def bytes_per_device(tree) -> int:
    """The largest number of bytes any one device holds of ``tree``, from the arrays' shards."""
    held: dict[jax.Device, int] = {}
    for array in jax.tree.leaves(tree):
        for shard in array.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return max(held.values())


def train(mesh_shape, axis_names, specs, zero_axis, steps: int = STEPS):
    """Train ``steps`` steps on one layout; the final params and a summary line."""
    mesh = jax.make_mesh(mesh_shape, axis_names, axis_types=(AxisType.Auto,) * len(axis_names))
    param_sh = {k: NamedSharding(mesh, specs.get(k, P())) for k in init_params()}
    batch_sh = NamedSharding(mesh, P("data"))
    params = jax.jit(init_params, static_argnums=0, out_shardings=param_sh)(0)
    state_sh = aw.state_shardings(
        jax.eval_shape(OPTIMIZER.init, params), param_sh, zero_axis=zero_axis
    )
    state = jax.jit(OPTIMIZER.init, out_shardings=state_sh)(params)
    step = jax.jit(
        train_step,
        in_shardings=(param_sh, state_sh, batch_sh),
        out_shardings=(param_sh, state_sh, NamedSharding(mesh, P())),
        donate_argnums=(0, 1),
    )
    for t in range(steps):
        params, state, value = step(params, state, jax.device_put(batch_at(t), batch_sh))
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    summary = (
        f"loss {float(value):.5f}, optimizer state per device "
        f"{bytes_per_device(state) / 1024:.0f} KiB of {state_bytes / 1024:.0f} KiB"
    )
    return jax.device_get(params), summary


def single_device_params(steps: int = STEPS):
    step = jax.jit(train_step)
    params = init_params()
    state = OPTIMIZER.init(params)
    for t in range(steps):
        params, state, _ = step(params, state, batch_at(t))
    return jax.device_get(params)


def parser() -> argparse.ArgumentParser:
    """The command line: ``--steps``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 is set unless "
        "XLA_FLAGS is already set; the layouts need 8 devices.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per layout")
    return parser


def main(steps: int = STEPS) -> None:
    print(f"{jax.device_count()} devices ({jax.devices()[0].platform})")
    reference = single_device_params(steps)
    for name, layout in LAYOUTS.items():
        params, summary = train(*layout, steps)
        difference = max(float(np.max(np.abs(params[k] - reference[k]))) for k in reference)
        print(f"{name:28s} {summary}; max |θ - θ_single_device| = {difference:.1e}")


if __name__ == "__main__":
    main(parser().parse_args().steps)
