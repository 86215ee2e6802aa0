"""benchmarks/step.py --quick: the smoke run produces consistent, saved results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

STEP = Path(__file__).resolve().parents[1] / "benchmarks" / "step.py"


@pytest.fixture(scope="module")
def step_module():
    spec = importlib.util.spec_from_file_location("benchmark_step", STEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpt2_shapes_have_124m_parameters_in_148_tensors(step_module):
    shapes = step_module.gpt2_shapes()
    assert len(shapes) == 148
    assert sum(int(__import__("math").prod(s)) for s in shapes) == 124_439_808


def test_quick_run_times_every_contender_and_saves_results(step_module, tmp_path):
    result = step_module.main(
        ["--quick", "--rounds", "2", "--workload", "one_large_tensor", "--out", str(tmp_path)]
    )
    saved = json.loads(next(tmp_path.glob("*_quick.json")).read_text())
    assert saved == json.loads(json.dumps(result))
    assert "AdamW step" in next(tmp_path.glob("*_quick.md")).read_text()
    assert saved["triad_gb_s"] > 0 and saved["machine"]["cpus"] >= 1
    (workload,) = saved["workloads"]
    assert workload["params"] == 1 << 16 and workload["tensors"] == 1
    contenders = workload["results"]
    assert set(contenders) == {
        "dispatch floor: identity, optax's arrays",
        "dispatch floor: identity, fused's arrays",
        "optax.adamw",
        "adamw_jax",
        "adamw_jax fused",
        "adamw_jax fused, update_and_apply",
        "adamw_jax fused, flat params",
        "adamw_jax fused AdamC, update_and_apply",
        "nnx.Optimizer, optax.adamw",
        "nnx.Optimizer, adamw_jax fused",
        "adamw_jax.flax.Optimizer, fused",
        "torch AdamW fused",
        "torch AdamW foreach",
        "keras AdamW",
    }
    for r in contenders.values():
        assert 0 < r["min_ms"] <= r["median_ms"] and r["compile_s"] > 0
        assert r["xla_temp_mb"] is None or r["xla_temp_mb"] >= 0
        assert r["fraction_of_bound"] == pytest.approx(workload["bound_ms"] / r["median_ms"])
        assert r["ratio_to_optax.adamw"] == pytest.approx(
            r["median_ms"] / contenders["optax.adamw"]["median_ms"]
        )
        assert r["ratio_to_nnx.Optimizer, optax.adamw"] == pytest.approx(
            r["median_ms"] / contenders["nnx.Optimizer, optax.adamw"]["median_ms"]
        )
    assert contenders["torch AdamW fused"]["ratio_to_torch AdamW fused"] == pytest.approx(1.0)
    # the Flax drop-in donated through nnx.jit: the one-pass step runs in place, as the flat one
    assert contenders["adamw_jax.flax.Optimizer, fused"]["xla_temp_mb"] < 0.25 / 100
    # one fp32 tensor, donated: the flat fused step updates p, m and v in place, so its scratch
    # is a few scalars, far below one copy of the 2**16-element buffer (0.25 MB)
    assert contenders["adamw_jax fused, flat params"]["xla_temp_mb"] < 0.25 / 100
