"""state_shardings and the transforms on 8 host devices: layouts (replicated, fully sharded,
2-D data x model, ZeRO-1) against the single-device run, state shardings before and after an
update, ZeRO-1 memory, abstract init, and every core transform under jit, shard_map and pmap."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamw_jax as aw
from adamw_jax.sharding import state_shardings
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory

STEPS = 20
# Every leaf but "odd" (5 elements) and "gain" (a scalar) divides by 8: those two exercise the
# documented fallback (kept replicated under ZeRO-1 rather than padded).
SHAPES = {"w1": (16, 32), "b1": (32,), "w2": (32, 8), "b2": (8,), "gain": (), "odd": (5,)}
PARAMS = make_params(5, SHAPES)
BATCHES = [
    (np.random.default_rng(t).normal(size=(32, 16)), np.random.default_rng(100 + t).normal(size=(32, 8)))
    for t in range(STEPS)
]


def auto_mesh(shape: tuple[int, ...], names: tuple[str, ...]) -> jax.sharding.Mesh:
    """A mesh whose axes are in Auto mode: XLA chooses (and inserts) the collectives."""
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def loss(params, batch):
    x, y = batch
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    out = params["gain"] * (hidden @ params["w2"] + params["b2"])
    return jnp.mean((out - y) ** 2) + jnp.mean(x[:, :5] * params["odd"])


def train_step(optimizer):
    def step(params, state, batch):
        updates, state = optimizer.update(jax.grad(loss)(params, batch), state, params)
        return aw.apply_updates(params, updates), state

    return step


# name: (mesh shape, mesh axes, parameter specs, batch spec, zero_axis)
LAYOUTS = {
    "replicated": ((8,), ("data",), {}, P("data"), None),
    "fully_sharded": ((8,), ("model",), {"w1": P(None, "model"), "b1": P("model"),
                                         "w2": P("model"), "b2": P("model")}, P(), None),
    "mesh_2d": ((2, 4), ("data", "model"), {"w1": P(None, "model"), "b1": P("model"),
                                            "w2": P("model")}, P("data"), None),
    "zero1": ((8,), ("data",), {}, P("data"), "data"),
    "mesh_2d_zero1": ((2, 4), ("data", "model"), {"w1": P(None, "model"), "b1": P("model"),
                                                  "w2": P("model")}, P("data"), "data"),
}


def layout(name: str, shapes=SHAPES):
    """(mesh, parameter shardings, batch sharding, zero_axis) of a named layout."""
    mesh_shape, axes, specs, batch_spec, zero_axis = LAYOUTS[name]
    mesh = auto_mesh(mesh_shape, axes)
    param_shardings = {k: NamedSharding(mesh, specs.get(k, P())) for k in shapes}
    return mesh, param_shardings, NamedSharding(mesh, batch_spec), zero_axis


def as_float32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def specs_of(tree):
    return jax.tree.map(lambda x: x.sharding.spec, tree)


def assert_placed(state, shardings):
    """Every array of ``state`` is laid out as ``shardings`` says."""
    def check(array, sharding):
        assert array.sharding.is_equivalent_to(sharding, array.ndim), (array.sharding, sharding)

    jax.tree.map(check, state, shardings)


OPTIMIZER = aw.adamw(1e-2, weight_decay=0.1, amsgrad=True)


def single_device_training(optimizer=OPTIMIZER):
    step = jax.jit(train_step(optimizer))
    params = as_float32(PARAMS)
    state = optimizer.init(params)
    for batch in BATCHES:
        params, state = step(params, state, as_float32(batch))
    return params


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_twenty_training_steps_match_the_single_device_run(name):
    mesh, param_sh, batch_sh, zero_axis = layout(name)
    params = jax.device_put(as_float32(PARAMS), param_sh)
    state_sh = state_shardings(jax.eval_shape(OPTIMIZER.init, params), param_sh, zero_axis=zero_axis)
    state = jax.jit(OPTIMIZER.init, out_shardings=state_sh)(params)
    assert_placed(state, state_sh)
    step = jax.jit(train_step(OPTIMIZER), in_shardings=(param_sh, state_sh, batch_sh),
                   out_shardings=(param_sh, state_sh), donate_argnums=(0, 1))
    for batch in BATCHES:
        params, state = step(params, state, as_float32(batch))
    assert_placed(params, param_sh)
    assert_placed(state, state_sh)
    # The layouts reorder the sums of the gradient (batch mean over "data", matmuls over
    # "model"), a relative change of a few float32 ulps. Adam's direction m̂/(√v̂+ε) is invariant
    # to the gradient's scale, so it moves θ by about η·1e-7 = 1e-9 a step, far below the
    # rounding of θ itself, which float32_tolerance bounds (measured: 1 to 1.5 ulp of |θ|).
    expected = [jax.device_get(single_device_training())]
    assert max_abs_error([jax.device_get(params)], expected) <= float32_tolerance(expected)


GRADS = [as_float32(g) for g in gradient_stream(PARAMS, 3, seed=6)]


@pytest.mark.parametrize(("name", "jitted"), [(name, True) for name in sorted(LAYOUTS)]
                         + [("mesh_2d", False), ("zero1", False)])
def test_state_keeps_its_shardings_through_updates(name, jitted):
    """Before and after each update, jitted (shardings propagated by XLA, none forced) or
    eager, the state is laid out as state_shardings says, and the numbers are exactly those of
    one device: the update is elementwise, so the layout cannot change an operation."""
    _, param_sh, _, zero_axis = layout(name)
    update = jax.jit(OPTIMIZER.update) if jitted else OPTIMIZER.update

    def run(param_sh, state_sh):
        params = jax.device_put(as_float32(PARAMS), param_sh)
        if jitted:
            state = jax.jit(OPTIMIZER.init, out_shardings=state_sh)(params)
        else:
            state = jax.device_put(OPTIMIZER.init(params), state_sh)
        assert_placed(state, state_sh)
        for grads in GRADS:
            updates, state = update(jax.device_put(grads, param_sh), state, params)
            assert_placed(state, state_sh)
            params = jax.device_put(aw.apply_updates(params, updates), param_sh)
        return jax.device_get(params)

    state_sh = state_shardings(OPTIMIZER.init(as_float32(PARAMS)), param_sh, zero_axis=zero_axis)
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    expected = run(jax.tree.map(lambda _: one_device, param_sh), jax.tree.map(lambda _: one_device, state_sh))
    assert max_abs_error([run(param_sh, state_sh)], [expected]) == 0.0


def bytes_per_device(tree) -> dict[jax.Device, int]:
    """Bytes each device stores of the arrays in ``tree``, read from the arrays' shards."""
    held: dict[jax.Device, int] = {}
    for array in jax.tree.leaves(tree):
        for shard in array.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held


def test_zero1_stores_one_eighth_of_the_moments_on_each_device():
    shapes = {k: s for k, s in SHAPES.items() if math.prod(s) % 8 == 0}
    mesh, param_sh, _, _ = layout("zero1", shapes)
    params = jax.device_put(as_float32(make_params(5, shapes)), param_sh)
    for zero_axis, fraction in ((None, 1), ("data", 8)):
        state_sh = state_shardings(OPTIMIZER.init(params), param_sh, zero_axis=zero_axis)
        moments = jax.jit(OPTIMIZER.init, out_shardings=state_sh)(params)[0]
        total = sum(x.nbytes for x in jax.tree.leaves((moments.mu, moments.nu, moments.nu_max)))
        held = bytes_per_device((moments.mu, moments.nu, moments.nu_max))
        assert len(held) == 8 and set(held.values()) == {total // fraction}


def test_leaves_that_do_not_divide_fall_back_to_their_parameter_sharding():
    _, param_sh, _, _ = layout("mesh_2d_zero1")
    shardings = state_shardings(OPTIMIZER.init(as_float32(PARAMS)), param_sh, zero_axis="data")
    expected = {"w1": P("data", "model"), "b1": P(("model", "data")), "w2": P(("model", "data"), None),
                "b2": P("data"), "gain": P(), "odd": P()}
    for moment in shardings[0].mu, shardings[0].nu, shardings[0].nu_max:
        assert specs_of_shardings(moment) == expected
    assert shardings[0].count.spec == P() and shardings[2].count.spec == P()


def specs_of_shardings(tree):
    return jax.tree.map(lambda s: s.spec, tree)
