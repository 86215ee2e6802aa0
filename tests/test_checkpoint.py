"""Orbax checkpoints of adamw_jax states: save, restore, continue, bit for bit; restore into a
sharded layout on the 8 forced host devices."""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from helpers import gradient_stream, make_params
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import adamw_jax as aw
from adamw_jax.sharding import state_shardings

STEPS = 12
SHAPES = {"w": (8, 4), "b": (8,), "scalar": (), "conv": (2, 4, 3)}
START = {k: jnp.asarray(v, jnp.float32) for k, v in make_params(0, SHAPES).items()}
GRADS = [
    {k: jnp.asarray(v, jnp.float32) for k, v in g.items()}
    for g in gradient_stream(make_params(0, SHAPES), STEPS, seed=2)
]
# A schedule, AMSGrad and a mask, so that the count, every moment and the mask all matter.
OPTIMIZER = aw.adamw(
    aw.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 3, STEPS, 1e-4),
    weight_decay=0.1,
    amsgrad=True,
    mask={"w": True, "b": False, "scalar": False, "conv": True},
)


@jax.jit
def step(params, opt_state, grads):
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return aw.apply_updates(params, updates), opt_state


def run(params, opt_state, grads):
    for grad in grads:
        params, opt_state = step(params, opt_state, grad)
    return params, opt_state


def save(directory: Path, tree) -> None:
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, tree)
        checkpointer.wait_until_finished()


def restore(directory: Path, like):
    """Restore into the shapes, dtypes and shardings of ``like`` (arrays or abstract arrays)."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory, abstract)


def assert_bit_identical(actual, expected) -> None:
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


UNINTERRUPTED = run(START, OPTIMIZER.init(START), GRADS)


@settings(max_examples=6)
@given(st.integers(0, STEPS))
def test_resumed_run_is_bit_identical_to_uninterrupted(stop):
    """Stop after any step, save, restore into a fresh process's templates, continue."""
    params, opt_state = run(START, OPTIMIZER.init(START), GRADS[:stop])
    with tempfile.TemporaryDirectory() as folder:
        save(Path(folder) / "checkpoint", {"params": params, "opt_state": opt_state})
        fresh = {"params": START, "opt_state": OPTIMIZER.init(START)}
        restored = restore(Path(folder) / "checkpoint", fresh)
    # NamedTuple states come back as NamedTuples, the int32 count as int32.
    assert_bit_identical(restored["opt_state"], opt_state)
    resumed = run(restored["params"], restored["opt_state"], GRADS[stop:])
    assert_bit_identical(resumed, UNINTERRUPTED)


def test_nnx_optimizer_resumes_bit_identically(tmp_path):
    """The Flax NNX way: save ``nnx.state`` of the model and the optimizer, ``nnx.update`` a
    freshly built pair with what was restored, keep training."""

    def build():
        model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, aw.adamw(1e-2, weight_decay=0.1), wrt=nnx.Param)

    inputs = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)

    @nnx.jit
    def train_step(model, trainer):
        grads = nnx.grad(lambda m: jnp.mean(jnp.sin(m(inputs)) ** 2))(model)
        trainer.update(model, grads)

    model, trainer = build()
    for _ in range(8):
        train_step(model, trainer)
    expected = nnx.state(model)

    model, trainer = build()
    for _ in range(3):
        train_step(model, trainer)
    save(tmp_path / "checkpoint", {"model": nnx.state(model), "optimizer": nnx.state(trainer)})
    model, trainer = build()
    restored = restore(
        tmp_path / "checkpoint", {"model": nnx.state(model), "optimizer": nnx.state(trainer)}
    )
    nnx.update(model, restored["model"])
    nnx.update(trainer, restored["optimizer"])
    assert int(trainer.step[...]) == 3
    for _ in range(5):
        train_step(model, trainer)
    assert_bit_identical(nnx.state(model), expected)


def test_restore_into_a_sharded_layout_and_continue(tmp_path):
    """A checkpoint written from one device restores straight into a (data=4, model=2) layout:
    parameters model-parallel, optimizer state ZeRO-1 over ``data``. Training continues there
    with the same numbers, since every AdamW operation is elementwise."""
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    param_specs = {
        "w": PartitionSpec(None, "model"),
        "b": PartitionSpec(),
        "scalar": PartitionSpec(),
        "conv": PartitionSpec(None, "model"),
    }
    param_shardings = {k: NamedSharding(mesh, spec) for k, spec in param_specs.items()}

    stop = 5
    params, opt_state = run(START, OPTIMIZER.init(START), GRADS[:stop])
    save(tmp_path / "checkpoint", {"params": params, "opt_state": opt_state})

    abstract_state = jax.eval_shape(OPTIMIZER.init, START)
    target = {
        "params": {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=param_shardings[k])
            for k, v in START.items()
        },
        "opt_state": jax.tree_util.tree_map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state,
            state_shardings(abstract_state, param_shardings, zero_axis="data"),
        ),
    }
    restored = restore(tmp_path / "checkpoint", target)

    for array, wanted in zip(
        jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(target)
    ):
        assert array.sharding.is_equivalent_to(wanted.sharding, array.ndim)
    moment = restored["opt_state"][0].mu["w"]  # (8, 4): rows over data, columns over model
    assert moment.addressable_shards[0].data.shape == (2, 2)
    assert_bit_identical(restored, {"params": params, "opt_state": opt_state})

    resumed = run(
        restored["params"],
        restored["opt_state"],
        [jax.device_put(g, param_shardings) for g in GRADS[stop:]],
    )
    assert_bit_identical(resumed, UNINTERRUPTED)
