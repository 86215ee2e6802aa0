"""state_shardings and the transforms on 8 host devices: layouts (replicated, fully sharded,
2-D data x model, ZeRO-1) against the single-device run, state shardings before and after an
update, ZeRO-1 memory, abstract init, and every core transform under jit, shard_map and pmap."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from hypothesis import given
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamw_jax as aw
from adamw_jax.sharding import state_shardings

STEPS = 20
# Every leaf but "odd" (5 elements) and "gain" (a scalar) divides by 8: those two exercise the
# documented fallback (kept replicated under ZeRO-1 rather than padded).
SHAPES = {"w1": (16, 32), "b1": (32,), "w2": (32, 8), "b2": (8,), "gain": (), "odd": (5,)}
PARAMS = make_params(5, SHAPES)
BATCHES = [
    (
        np.random.default_rng(t).normal(size=(32, 16)),
        np.random.default_rng(100 + t).normal(size=(32, 8)),
    )
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
    "fully_sharded": (
        (8,),
        ("model",),
        {"w1": P(None, "model"), "b1": P("model"), "w2": P("model"), "b2": P("model")},
        P(),
        None,
    ),
    "mesh_2d": (
        (2, 4),
        ("data", "model"),
        {"w1": P(None, "model"), "b1": P("model"), "w2": P("model")},
        P("data"),
        None,
    ),
    "zero1": ((8,), ("data",), {}, P("data"), "data"),
    "mesh_2d_zero1": (
        (2, 4),
        ("data", "model"),
        {"w1": P(None, "model"), "b1": P("model"), "w2": P("model")},
        P("data"),
        "data",
    ),
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


def compiler_tolerance(reference, steps: int) -> float:
    """Layouts run the same elementwise operations, but XLA may fuse them differently, e.g.
    contract a multiply-add into an FMA in one program and not in the other (<= 1/2 ulp each).
    One ulp of the largest |θ| per step bounds that; most runs are bitwise equal (measured)."""
    largest = max(float(np.max(np.abs(v), initial=1.0)) for v in jax.tree.leaves(reference))
    return steps * float(np.spacing(np.float32(largest)))


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
    state_sh = state_shardings(
        jax.eval_shape(OPTIMIZER.init, params), param_sh, zero_axis=zero_axis
    )
    state = jax.jit(OPTIMIZER.init, out_shardings=state_sh)(params)
    assert_placed(state, state_sh)
    step = jax.jit(
        train_step(OPTIMIZER),
        in_shardings=(param_sh, state_sh, batch_sh),
        out_shardings=(param_sh, state_sh),
        donate_argnums=(0, 1),
    )
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


@pytest.mark.parametrize(
    ("name", "jitted"), [(name, True) for name in sorted(LAYOUTS)] + [("zero1", False)]
)
def test_state_keeps_its_shardings_through_updates(name, jitted):
    """Before and after each update, jitted (shardings propagated by XLA, none forced) or
    eager, the state is laid out as state_shardings says, and the numbers are those of one
    device: the update is elementwise, so the layout changes no operation."""
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
    expected = run(
        jax.tree.map(lambda _: one_device, param_sh), jax.tree.map(lambda _: one_device, state_sh)
    )
    assert max_abs_error([run(param_sh, state_sh)], [expected]) <= compiler_tolerance(
        expected, len(GRADS)
    )


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
    expected = {
        "w1": P("data", "model"),
        "b1": P(("model", "data")),
        "w2": P(("model", "data"), None),
        "b2": P("data"),
        "gain": P(),
        "odd": P(),
    }
    for moment in shardings[0].mu, shardings[0].nu, shardings[0].nu_max:
        assert specs_of_shardings(moment) == expected
    assert shardings[0].count.spec == P() and shardings[2].count.spec == P()


def specs_of_shardings(tree):
    return jax.tree.map(lambda s: s.spec, tree)


ZERO1_2D_SPECS = {
    "w1": P("data", "model"),
    "b1": P(("model", "data")),
    "w2": P(("model", "data"), None),
    "b2": P("data"),
    "gain": P(),
    "odd": P(),
}


class FlatBufferState(NamedTuple):
    """A state that does not mirror the parameters: one flat buffer, as a fused optimizer keeps."""

    count: jax.Array
    flat: jax.Array


def flat_buffer_sum() -> optax.GradientTransformation:
    def init(params):
        return FlatBufferState(jnp.zeros([], jnp.int32), jnp.zeros_like(ravel_pytree(params)[0]))

    def update(updates, state, params=None):
        return updates, FlatBufferState(state.count + 1, state.flat + ravel_pytree(updates)[0])

    return optax.GradientTransformation(init, update)


WRAPPED = {
    "masked": optax.masked(OPTIMIZER, lambda p: {k: k != "odd" for k in p}),
    "inject_hyperparams": optax.inject_hyperparams(aw.adamw)(learning_rate=1e-2, weight_decay=0.1),
    "multi_steps": optax.MultiSteps(OPTIMIZER, 2).gradient_transformation(),
    "fused_flat_buffers": aw.adamw(1e-2, weight_decay=0.1, fused=True),
    "chain_clip_ema_flat": optax.chain(
        optax.clip_by_global_norm(1.0), OPTIMIZER, optax.ema(0.9), flat_buffer_sum()
    ),
}


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_any_state_that_mirrors_the_parameters_is_mapped(name):
    """Arrays under a parameter's key get its ZeRO-1 sharding; every other array is replicated
    (scalars) or split along "data" (the flat buffer), whatever wraps the state."""
    optimizer = WRAPPED[name]
    _, param_sh, _, _ = layout("mesh_2d_zero1")
    params = jax.device_put(as_float32(PARAMS), param_sh)
    state_sh = state_shardings(jax.eval_shape(optimizer.init, params), param_sh, zero_axis="data")
    abstract = jax.eval_shape(optimizer.init, params)
    paths = jax.tree_util.tree_flatten_with_path(state_sh)[0]
    assert len(paths) == len(jax.tree.leaves(abstract))
    for (path, sharding), leaf in zip(paths, jax.tree.leaves(abstract)):
        key = getattr(path[-1], "key", None)
        if key in SHAPES and leaf.shape == SHAPES[key]:
            expected = ZERO1_2D_SPECS[key]
        else:
            expected = P() if leaf.ndim == 0 else P("data")
        assert sharding.spec == expected, jax.tree_util.keystr(path)
    state = jax.jit(optimizer.init, out_shardings=state_sh)(params)
    _, state = jax.jit(optimizer.update)(jax.device_put(GRADS[0], param_sh), state, params)
    assert_placed(state, state_sh)


def test_param_shardings_as_specs_arrays_or_abstract_params_agree():
    mesh, param_sh, _, _ = layout("mesh_2d")
    params = jax.device_put(as_float32(PARAMS), param_sh)
    state = OPTIMIZER.init(params)
    expected = specs_of_shardings(state_shardings(state, param_sh, zero_axis="data"))
    forms = (
        (jax.tree.map(lambda s: s.spec, param_sh), mesh),
        (params, None),
        (
            jax.tree.map(
                lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
            ),
            None,
        ),
    )
    for form, form_mesh in forms:
        assert specs_of_shardings(state_shardings(state, form, form_mesh, "data")) == expected


def test_shapes_are_matched_exactly_when_param_shardings_carry_them():
    """A same-structure tree of other shapes (transposed) mirrors the parameters only when the
    shapes are unknown and the sharding fits; with the sharded arrays it is replicated."""
    _, param_sh, _, _ = layout("mesh_2d")
    params = jax.device_put(as_float32(PARAMS), param_sh)
    transposed = {k: jnp.zeros(tuple(reversed(s))) for k, s in SHAPES.items()}
    by_shape = state_shardings(transposed, params)
    assert set(specs_of_shardings(by_shape).values()) == {P()}
    assert specs_of_shardings(state_shardings(transposed, param_sh))["w1"] == P(None, "model")


def test_bad_arguments_are_named_with_the_fix():
    mesh, param_sh, _, _ = layout("mesh_2d")
    state = OPTIMIZER.init(as_float32(PARAMS))
    with pytest.raises(ValueError, match=r"zero_axis='batch' must name axes of the mesh.*'data'"):
        state_shardings(state, param_sh, zero_axis="batch")
    with pytest.raises(ValueError, match=r"zero_axis=\(\)"):
        state_shardings(state, param_sh, zero_axis=())
    with pytest.raises(TypeError, match=r"param_shardings leaves.*got str 'model'"):
        state_shardings(state, {k: "model" for k in SHAPES}, mesh)
    with pytest.raises(ValueError, match=r"Pass mesh="):
        state_shardings(state, {k: P() for k in SHAPES})
    with pytest.raises(TypeError, match=r"mesh must be a jax.sharding.Mesh"):
        state_shardings(state, param_sh, mesh="data")


MESH_2D = auto_mesh((2, 4), ("data", "model"))


@st.composite
def sharded_shapes(draw):
    """A shape and a valid parameter spec for it on the (data=2, model=4) mesh."""
    shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 12, 16]), max_size=3)))
    free, spec = ["data", "model"], []
    for size in shape:
        options = [None] + [a for a in free if size % MESH_2D.shape[a] == 0]
        choice = draw(st.sampled_from(options))
        spec.append(choice)
        free = [a for a in free if a != choice]
    return shape, P(*spec)


@given(sharded_shapes(), st.sampled_from(["data", "model", ("data", "model")]))
def test_zero_split_is_an_even_refinement_of_the_parameter_sharding(shape_and_spec, zero_axis):
    shape, spec = shape_and_spec
    leaf = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(MESH_2D, spec))
    count, moment = state_shardings((jnp.zeros([], jnp.int32), leaf), leaf, zero_axis=zero_axis)
    assert count.spec == P()
    param_axes = [_axes(e) for e in spec] + [()] * (len(shape) - len(spec))
    moment_axes = [_axes(e) for e in moment.spec] + [()] * (len(shape) - len(moment.spec))
    used = [a for axes in moment_axes for a in axes]
    assert len(used) == len(set(used))
    for size, before, after in zip(shape, param_axes, moment_axes):
        assert after[: len(before)] == before
        assert size % math.prod(MESH_2D.shape[a] for a in after) == 0
    wanted = (zero_axis,) if isinstance(zero_axis, str) else zero_axis
    missing = tuple(a for a in wanted if all(a not in axes for axes in param_axes))
    splittable = any(
        size % math.prod(MESH_2D.shape[a] for a in before + missing) == 0
        for size, before in zip(shape, param_axes)
    )
    assert (
        set(wanted) <= set(used)
        if (splittable or not missing)
        else used == [a for axes in param_axes for a in axes]
    )


def _axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def test_init_on_abstract_parameters_creates_the_state_directly_sharded():
    """The state of parameters described only by ShapeDtypeStructs is compiled to be created
    in place: each device's output is 1/8 of the state, none is ever materialised whole."""
    mesh = auto_mesh((2, 4), ("data", "model"))
    specs = {"embed": P(None, "model"), "w": P("model"), "b": P("model")}
    shapes = {"embed": (4096, 256), "w": (256, 256), "b": (256,)}
    abstract_params = {
        k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, specs[k]))
        for k, s in shapes.items()
    }
    abstract_state = jax.eval_shape(OPTIMIZER.init, abstract_params)
    assert abstract_state[0].mu["embed"].shape == (4096, 256)
    shardings = state_shardings(abstract_state, abstract_params, zero_axis="data")
    init = jax.jit(OPTIMIZER.init, out_shardings=shardings)
    compiled = init.lower(abstract_params).compile()
    moment_bytes = 3 * 4 * sum(math.prod(s) for s in shapes.values())
    # 1/8 of mu, nu and nu_max, plus the three int32 counters and the output tuple's pointer
    # table (108 bytes measured); a replicated state would be 8x larger.
    assert compiled.memory_analysis().output_size_in_bytes <= moment_bytes // 8 + 128
    params = jax.jit(
        lambda: {k: jnp.ones(s) for k, s in shapes.items()},
        out_shardings=jax.tree.map(lambda a: a.sharding, abstract_params),
    )()
    state = init(params)
    assert_placed(state, shardings)
    assert {s.data.shape for s in state[0].nu["embed"].addressable_shards} == {(2048, 64)}


CORE_SHAPES = {"w": (8, 4), "b": (4,), "s": ()}
CORE_PARAMS = make_params(7, CORE_SHAPES)
CORE_GRADS = gradient_stream(CORE_PARAMS, 4, seed=8)
CORE_SPECS = {"w": P("data", "model"), "b": P("model"), "s": P()}
CORE = {
    "scale_by_adam": aw.scale_by_adam(amsgrad=True, nesterov=True),
    "scale_by_adam_hat_bf16_mu": aw.scale_by_adam(eps_mode="hat", mu_dtype=jnp.bfloat16),
    "add_decayed_weights": aw.add_decayed_weights(0.1, mask={"w": True, "b": False, "s": True}),
    "decoupled_weight_decay": aw.decoupled_weight_decay(1e-2, lambda t: 1.0 / (1.0 + t)),
    "scale_by_learning_rate": aw.scale_by_learning_rate(
        aw.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
    ),
    "adamw": aw.adamw(1e-2, weight_decay=1e-3, weight_decay_mode="decoupled"),
    "adam": aw.adam(1e-2),
}


def scan_steps(optimizer, update, params, stacked_grads):
    """``params`` after one optimizer step per gradient, with ``update`` as the update function."""

    def step(carry, grads):
        params, state = carry
        updates, state = update(grads, state, params)
        return (aw.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, optimizer.init(params)), stacked_grads)[0][0]


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_transform_under_jit_with_sharded_inputs_and_shard_map(name):
    """Sharded jit and shard_map (each device updating its own shard) give the numbers of one
    device: every core transform is elementwise, with replicated counters."""
    optimizer = CORE[name]
    params = as_float32(CORE_PARAMS)
    stacked = as_float32({k: np.stack([g[k] for g in CORE_GRADS]) for k in CORE_SHAPES})
    run = jax.jit(scan_steps, static_argnums=(0, 1))
    expected = jax.device_get(run(optimizer, optimizer.update, params, stacked))

    param_sh = {k: NamedSharding(MESH_2D, spec) for k, spec in CORE_SPECS.items()}
    stacked_sh = {k: NamedSharding(MESH_2D, P(None, *spec)) for k, spec in CORE_SPECS.items()}
    sharded = run(
        optimizer,
        optimizer.update,
        jax.device_put(params, param_sh),
        jax.device_put(stacked, stacked_sh),
    )
    assert_placed(sharded, param_sh)
    assert max_abs_error([jax.device_get(sharded)], [expected]) <= compiler_tolerance(
        expected, len(CORE_GRADS)
    )

    state_specs = specs_of_shardings(
        state_shardings(jax.eval_shape(optimizer.init, params), param_sh)
    )
    local_update = jax.shard_map(
        optimizer.update,
        mesh=MESH_2D,
        in_specs=(CORE_SPECS, state_specs, CORE_SPECS),
        out_specs=(CORE_SPECS, state_specs),
    )
    mapped = run(
        optimizer,
        local_update,
        jax.device_put(params, param_sh),
        jax.device_put(stacked, stacked_sh),
    )
    assert max_abs_error([jax.device_get(mapped)], [expected]) <= compiler_tolerance(
        expected, len(CORE_GRADS)
    )


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_transform_under_pmap_data_parallel_equals_one_device(name):
    """Each of 8 devices sees its own gradient; lax.pmean averages them before the update. The
    replicas stay bitwise identical and follow the single-device run on the mean gradient up to
    the float32 rounding of that mean (a relative 1e-7 on g, invisible in Adam's scale-free
    direction and far below the rounding of θ that float32_tolerance bounds)."""
    optimizer = CORE[name]
    rng = np.random.default_rng(9)
    per_device = [{k: g[k] + rng.normal(size=(8, *np.shape(g[k]))) for k in g} for g in CORE_GRADS]
    mean = [{k: np.mean(g[k], axis=0) for k in g} for g in per_device]

    def data_parallel(params, stacked_grads):
        def update(grads, state, params):
            return optimizer.update(jax.lax.pmean(grads, "devices"), state, params)

        return scan_steps(optimizer, update, params, stacked_grads)

    replicas = jax.pmap(data_parallel, axis_name="devices", in_axes=(None, 1))(
        as_float32(CORE_PARAMS),
        as_float32({k: np.stack([g[k] for g in per_device]) for k in CORE_SHAPES}),
    )
    replicas = jax.device_get(replicas)
    copies = [{k: replicas[k][i] for k in CORE_SHAPES} for i in range(8)]
    assert all(max_abs_error([c], [copies[0]]) == 0.0 for c in copies)
    expected = trajectory(optimizer, CORE_PARAMS, mean)
    assert max_abs_error([copies[0]], expected[-1:]) <= float32_tolerance(expected)


FUSED_SHAPES = {"big": (512, 128), "w": (16, 32), "b": (32,), "s": (), "odd": (5,)}
FUSED_PARAMS = make_params(11, FUSED_SHAPES)
FUSED_GRADS = [as_float32(g) for g in gradient_stream(FUSED_PARAMS, 3, seed=12)]
FUSED = aw.adamw(
    1e-2, weight_decay=0.1, amsgrad=True, mask={k: k != "b" for k in FUSED_SHAPES}, fused=True
)
# "big" (2**16 elements) has moment buffers of its own, in its shape; the others share one.
FUSED_SPECS = {
    "sharded": {"big": P("data"), "w": P(None, "data"), "b": P("data")},
    "replicated": {},
}


def fused_steps(param_sh, state_sh, door: str):
    """Three jitted, donated steps of FUSED through ``door``: the params and the state."""

    def two_calls(grads, state, params):
        updates, state = FUSED.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = (
        two_calls
        if door == "update"
        else (lambda grads, state, params: aw.update_and_apply(FUSED, grads, state, params))
    )
    step = jax.jit(step, out_shardings=(param_sh, state_sh), donate_argnums=(1, 2))
    params = jax.device_put(as_float32(FUSED_PARAMS), param_sh)
    state = jax.jit(FUSED.init, out_shardings=state_sh)(params)
    assert_placed(state, state_sh)
    for grads in FUSED_GRADS:
        params, state = step(jax.device_put(grads, param_sh), state, params)
        assert_placed(state, state_sh)
        assert_placed(params, param_sh)
    return jax.device_get(params)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("specs", sorted(FUSED_SPECS))
@pytest.mark.parametrize("door", ["update", "update_and_apply"])
def test_fused_step_on_explicit_and_auto_meshes_equals_one_device(axis_type, specs, door):
    """fused=True on an 8-device mesh, Explicit axes (sharding in types) or Auto: a leaf alone in
    its buffer keeps its sharding through the pass (on Explicit axes, its moments too), packed
    leaves share a replicated buffer; the state is where state_shardings says, the values those of one device (the pass is
    elementwise: at most XLA's other fusion choices, compiler_tolerance)."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    param_sh = {k: NamedSharding(mesh, FUSED_SPECS[specs].get(k, P())) for k in FUSED_SHAPES}
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.eval_shape(FUSED.init, as_float32(FUSED_PARAMS))
    expected = fused_steps(
        jax.tree.map(lambda _: one_device, param_sh),
        jax.tree.map(lambda _: one_device, abstract),
        door,
    )
    with jax.set_mesh(mesh):  # Explicit axes need it for jit; Auto ones accept it
        params = jax.device_put(as_float32(FUSED_PARAMS), param_sh)
        state_sh = state_shardings(jax.eval_shape(FUSED.init, params), param_sh)
        # Buffers: "big" and "b" (not decayed) alone, in their shapes; "w", "s", "odd" packed.
        own = (
            {"sharded": P("data"), "replicated": P()}[specs]
            if axis_type == AxisType.Explicit
            else P()
        )
        expected_specs = {(512, 128): own, (32,): own, (518,): P()}
        for x, sharding in zip(abstract.mu, state_sh.mu):
            assert sharding.is_equivalent_to(NamedSharding(mesh, expected_specs[x.shape]), x.ndim)
        sharded = fused_steps(param_sh, state_sh, door)
    assert max_abs_error([sharded], [expected]) <= compiler_tolerance(expected, len(FUSED_GRADS))


def test_param_shardings_of_other_parameters_are_named_instead_of_replicating():
    """A sharding tree missing a parameter, with an extra one, or nested otherwise: the moments
    would all be replicated; the error names where the state and the tree differ."""
    mesh, param_sh, _, _ = layout("mesh_2d")
    state = OPTIMIZER.init(as_float32(PARAMS))
    missing = {k: v for k, v in param_sh.items() if k != "odd"}
    with pytest.raises(
        ValueError,
        match=r"\[0\]\.mu is keyed like the parameters.*only in the "
        r"state: \['odd'\]; only in param_shardings: \[\]",
    ):
        state_shardings(state, missing)
    with pytest.raises(ValueError, match=r"only in param_shardings: \['extra'\]"):
        state_shardings(state, {**param_sh, "extra": param_sh["w1"]})
    nested = {**param_sh, "w1": {"kernel": param_sh["w1"]}}
    with pytest.raises(ValueError, match=r"does not have their tree structure \(the state has"):
        state_shardings(state, nested)
    # A state with no mapping keyed like the parameters is no mismatch: the fused state's flat
    # buffers are replicated (and a tree of the parameters' structure with other shapes, a
    # factored moment, is placed as test_shapes_are_matched_exactly... says).
    fused = aw.adamw(1e-2, fused=True).init(as_float32(PARAMS))
    assert {s.spec for s in jax.tree.leaves(state_shardings(fused, param_sh))} == {P()}
