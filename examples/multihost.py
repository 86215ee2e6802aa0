"""Data-parallel AdamW across processes (hosts) with jax.distributed, ZeRO-1 optimizer state.

Every process runs the same program on its own devices; jax.distributed joins them into one set
of global devices, the batch is split over all of them, and XLA all-reduces the gradients (CPU:
gloo over TCP; GPU: NCCL; TPU: ICI/DCN). The optimizer state is split over all devices
(``state_shardings(..., zero_axis="data")``), so each holds 1/N of the moments.

One machine, N processes with 4 CPU devices each (the launcher picks a free port):

    python examples/multihost.py --spawn 2 --local-devices 4

Real hosts: start the same command once per host, process 0's address as the coordinator:

    python examples/multihost.py --coordinator 10.0.0.1:8476 --num-processes 2 --process-id 0
    python examples/multihost.py --coordinator 10.0.0.1:8476 --num-processes 2 --process-id 1
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import adamw_jax as aw

SHAPES = {"w1": (16, 32), "b1": (32,), "w2": (32, 1), "b2": (1,)}
GLOBAL_BATCH = 64
OPTIMIZER = aw.adamw(1e-2, weight_decay=1e-2)


def initial_params() -> dict[str, np.ndarray]:
    """The same float32 parameters in every process (a shared seed)."""
    rng = np.random.default_rng(0)
    return {k: (rng.normal(size=s) / np.sqrt(s[0])).astype(np.float32) for k, s in SHAPES.items()}


def global_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` of a regression task, identical in every process."""
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(GLOBAL_BATCH, 16)).astype(np.float32)
    return x, np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)


def loss(params, batch):
    x, y = batch
    prediction = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    return jnp.mean((prediction - y) ** 2)


def train(mesh: Mesh, steps: int) -> tuple[dict[str, np.ndarray], float]:
    """``steps`` of data-parallel AdamW on ``mesh`` (axis "data"); final params and loss."""
    replicated = NamedSharding(mesh, P())
    param_sh = {k: replicated for k in SHAPES}
    batch_sh = NamedSharding(mesh, P("data"))
    params = jax.device_put(initial_params(), param_sh)
    state_sh = aw.state_shardings(
        jax.eval_shape(OPTIMIZER.init, params), param_sh, zero_axis="data"
    )
    state = jax.jit(OPTIMIZER.init, out_shardings=state_sh)(params)

    def step(params, state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = OPTIMIZER.update(grads, state, params)
        return aw.apply_updates(params, updates), state, value

    step = jax.jit(
        step,
        in_shardings=(param_sh, state_sh, batch_sh),
        out_shardings=(param_sh, state_sh, replicated),
        donate_argnums=(0, 1),
    )
    for t in range(steps):
        # Each process places only the rows of its own devices. Here every process can build
        # the whole (tiny) batch; a real input pipeline reads just its slice.
        host_batch = global_batch(t)
        batch = tuple(
            jax.make_array_from_callback(a.shape, batch_sh, lambda index, a=a: a[index])
            for a in host_batch
        )
        params, state, value = step(params, state, batch)
    # Replicated arrays: every process holds the whole value on each of its devices.
    return {k: np.asarray(v.addressable_data(0)) for k, v in params.items()}, float(
        np.asarray(value.addressable_data(0))
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def spawn(args: argparse.Namespace) -> int:
    """Start ``args.spawn`` worker processes on localhost; end them all on failure or timeout."""
    coordinator = f"localhost:{free_port()}"
    # CPU host devices per process: jax reads JAX_NUM_CPU_DEVICES when its backend starts.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if args.local_devices:
        env["JAX_NUM_CPU_DEVICES"] = str(args.local_devices)
    print(f"coordinator {coordinator}", flush=True)
    workers = []
    for process_id in range(args.spawn):
        command = [
            sys.executable,
            __file__,
            "--coordinator",
            coordinator,
            "--process-id",
            str(process_id),
            "--num-processes",
            str(args.spawn),
            "--steps",
            str(args.steps),
        ]
        if args.output and process_id == 0:
            command += ["--output", args.output]
        workers.append(subprocess.Popen(command, env=env))
        print(f"worker {process_id} pid {workers[-1].pid}", flush=True)
    deadline = time.monotonic() + args.timeout
    try:
        while any(w.poll() is None for w in workers):
            if time.monotonic() > deadline or any(w.returncode not in (None, 0) for w in workers):
                break
            time.sleep(0.1)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    return max(abs(w.returncode) for w in workers)


def parser() -> argparse.ArgumentParser:
    """The command line: a launcher (``--spawn``) or one process of a run."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--spawn", type=int, help="start this many processes on localhost")
    parser.add_argument("--coordinator", help="host:port of process 0")
    parser.add_argument("--process-id", type=int, help="this process's index, 0 to N - 1")
    parser.add_argument("--num-processes", type=int, help="N, the processes in the run")
    parser.add_argument(
        "--local-devices",
        type=int,
        help="with --spawn on CPU: host devices per process (sets JAX_NUM_CPU_DEVICES)",
    )
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--output", help="process 0 saves the final parameters here (.npz)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds, with --spawn")
    return parser


def main() -> int:
    args = parser().parse_args()
    if args.spawn:
        return spawn(args)
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    params, final_loss = train(mesh, args.steps)
    print(
        f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} of "
        f"{jax.device_count()} devices, loss after {args.steps} steps {final_loss:.6f}",
        flush=True,
    )
    if args.output and jax.process_index() == 0:
        np.savez(args.output, **params)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
