"""examples/multihost.py: 2 processes x 4 CPU devices joined by jax.distributed train as one
process does, and the launcher leaves no process or port behind."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import float32_tolerance, max_abs_error
from jax.sharding import AxisType

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multihost.py"
STEPS = 20
TIMEOUT_S = 240


def load_example():
    spec = importlib.util.spec_from_file_location("multihost_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_launcher(*arguments: str) -> str:
    """Run the example's launcher in its own process group, killed whole if it overruns."""
    launcher = subprocess.Popen(
        [sys.executable, str(EXAMPLE), *arguments, "--timeout", str(TIMEOUT_S)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = launcher.communicate(timeout=TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        output, _ = launcher.communicate()
        pytest.fail(f"multihost launcher overran {TIMEOUT_S + 30} s:\n{output[-3000:]}")
    assert launcher.returncode == 0, output[-3000:]
    return output


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_processes_of_four_devices_match_the_single_process_run(tmp_path):
    output_file = tmp_path / "params.npz"
    output = run_launcher(
        "--spawn", "2", "--local-devices", "4", "--steps", str(STEPS), "--output", str(output_file)
    )
    assert "process 0/2: 4 of 8 devices" in output and "process 1/2: 4 of 8 devices" in output

    pids = [int(pid) for pid in re.findall(r"worker \d pid (\d+)", output)]
    assert len(pids) == 2 and not any(is_running(pid) for pid in pids)
    port = int(re.search(r"coordinator localhost:(\d+)", output).group(1))
    with socket.socket() as probe:
        # SO_REUSEADDR lets the bind pass over connections left in TIME_WAIT (closed, owned by
        # no process) but still fails if any process listens on the port: it was released.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("localhost", port))

    example = load_example()
    one_device = jax.make_mesh(
        (1,), ("data",), devices=jax.devices()[:1], axis_types=(AxisType.Auto,)
    )
    expected, _ = example.train(one_device, STEPS)
    with np.load(output_file) as saved:
        actual = {k: saved[k] for k in saved.files}
    # 8 devices sum the batch's gradient in another order than one device: a relative change of
    # a few float32 ulps, which Adam's scale-free direction passes on as about η·1e-7 a step,
    # far below θ's own rounding, bounded as for any float32 trajectory of STEPS steps.
    assert set(actual) == set(expected)
    assert max_abs_error([actual], [expected]) <= float32_tolerance([expected] * STEPS)
