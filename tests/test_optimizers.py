"""adamw / adam: whole trajectories against the float64 reference, for every option."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from reference import adamw_trajectory

import adamw_jax as aw

STEPS = 200
PARAMS = make_params(0)
GRADS = gradient_stream(PARAMS, STEPS, seed=1)

OPTIONS = {
    "defaults": {},
    "weight_decay": dict(weight_decay=0.1),
    "amsgrad": dict(amsgrad=True),
    "nesterov": dict(nesterov=True),
    "hat": dict(eps_mode="hat", eps=1e-7),
    "hat_amsgrad": dict(eps_mode="hat", amsgrad=True, weight_decay=0.05),
    "eps_root": dict(eps_root=1e-8, eps=0.0),
    "large_eps": dict(eps=1e-2),
    "betas": dict(b1=0.5, b2=0.95),
    "b1_zero": dict(b1=0.0),
    "maximize": dict(maximize=True, weight_decay=0.1),
    "decoupled": dict(weight_decay=1e-3, weight_decay_mode="decoupled"),
    "nesterov_amsgrad_decay": dict(nesterov=True, amsgrad=True, weight_decay=0.2),
}


def warmup_cosine(step):
    return float(aw.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 20, STEPS, 1e-4)(step))


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_adamw_matches_reference(name):
    options = {"weight_decay": 0.0, **OPTIONS[name]}
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, **options)
    actual = trajectory(aw.adamw(1e-2, **options), PARAMS, GRADS)
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)


def test_without_bias_correction_matches_reference():
    optimizer = optax.chain(
        aw.scale_by_adam(bias_correction=False), aw.scale_by_learning_rate(1e-2)
    )
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, bias_correction=False)
    assert max_abs_error(trajectory(optimizer, PARAMS, GRADS), expected) <= float32_tolerance(
        expected
    )


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_schedules_for_learning_rate_and_decay(mode):
    decay = 0.1 if mode == "coupled" else 1e-3
    expected = adamw_trajectory(
        PARAMS,
        GRADS,
        learning_rate=warmup_cosine,
        weight_decay=lambda t: decay * (1 + t / STEPS),
        weight_decay_mode=mode,
        peak_learning_rate=1e-2,
    )
    schedule = aw.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 20, STEPS, 1e-4)
    optimizer = aw.adamw(
        schedule,
        weight_decay=lambda t: decay * (1 + t / STEPS),
        weight_decay_mode=mode,
        peak_learning_rate=1e-2 if mode == "decoupled" else None,
    )
    actual = trajectory(optimizer, PARAMS, GRADS)
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)


def test_decoupled_decay_is_not_multiplied_by_the_learning_rate():
    """With a zero gradient only decay acts: coupled shrinks θ by η·λ, decoupled by λ."""
    params = {"w": jnp.ones(3)}
    zero = {"w": jnp.zeros(3)}
    for mode, factor in (("coupled", 1 - 0.5 * 0.1), ("decoupled", 1 - 0.1)):
        opt = aw.adamw(0.5, weight_decay=0.1, weight_decay_mode=mode)
        updates, _ = opt.update(zero, opt.init(params), params)
        np.testing.assert_allclose(aw.apply_updates(params, updates)["w"], factor, rtol=1e-7)


def test_adam_is_adamw_without_decay():
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=3e-3, amsgrad=True)
    actual = trajectory(aw.adam(3e-3, amsgrad=True), PARAMS, GRADS)
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)


def test_mask_limits_decay_to_selected_leaves():
    mask = {"w": True, "b": False, "scalar": False, "conv": True}
    expected = adamw_trajectory(
        PARAMS, GRADS, learning_rate=1e-2, weight_decay=0.3, decay_mask=mask
    )
    actual = trajectory(aw.adamw(1e-2, weight_decay=0.3, mask=mask), PARAMS, GRADS)
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)
    by_rank = trajectory(
        aw.adamw(1e-2, weight_decay=0.3, mask=lambda p: {k: v.ndim >= 2 for k, v in p.items()}),
        PARAMS,
        GRADS,
    )
    assert max_abs_error(by_rank, actual) == 0.0


def test_state_structure_does_not_depend_on_float_or_schedule():
    params = {"w": jnp.ones(3)}
    as_float = aw.adamw(1e-3, weight_decay=1e-2).init(params)
    as_schedule = aw.adamw(lambda t: 1e-3, weight_decay=lambda t: 1e-2).init(params)

    assert jax.tree_util.tree_structure(as_float) == jax.tree_util.tree_structure(as_schedule)
    assert all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree_util.tree_leaves(as_float), jax.tree_util.tree_leaves(as_schedule))
    )


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(b1=1.0), ValueError, "b1"),
        (dict(b1=-0.1), ValueError, "b1"),
        (dict(b2=1.5), ValueError, "b2"),
        (dict(b2=float("nan")), ValueError, "b2"),
        (dict(eps=-1e-8), ValueError, "eps"),
        (dict(eps_root=-1.0), ValueError, "eps_root"),
        (dict(learning_rate=-1e-3), ValueError, "learning_rate"),
        (dict(learning_rate="1e-3"), TypeError, "learning_rate"),
        (dict(b1=[0.9, 0.999]), TypeError, "b1"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (dict(eps_mode="keras"), ValueError, "eps_mode"),
        (dict(weight_decay_mode="l2"), ValueError, "weight_decay_mode"),
        (
            dict(learning_rate=lambda t: 1e-3, weight_decay_mode="decoupled"),
            ValueError,
            "peak_learning_rate",
        ),
        (dict(peak_learning_rate=1e-3), ValueError, "peak_learning_rate"),
        (dict(mu_dtype="int32"), TypeError, "mu_dtype"),
        (dict(nu_dtype="not-a-dtype"), TypeError, "nu_dtype"),
        (dict(nesterov=True, eps_mode="hat"), ValueError, "nesterov"),
    ],
)
def test_bad_arguments_are_named_when_built(kwargs, error, words):
    with pytest.raises(error, match=words):
        aw.adamw(**{"learning_rate": 1e-3, **kwargs})


@pytest.mark.parametrize(
    "mask, error",
    [({"w": True}, ValueError), ({"w": True, "b": 1}, TypeError), ([True, False], ValueError)],
)
def test_mask_that_does_not_fit_is_named_when_first_used(mask, error):
    params = {"w": jnp.ones(2), "b": jnp.ones(2), "c": jnp.ones(1)}
    opt = aw.adamw(1e-3, mask=mask, weight_decay=1e-2)
    with pytest.raises(error, match="mask"):
        opt.update(params, opt.init(params), params)


OPTAX_TWINS = [
    (aw.adamw, optax.adamw),
    (aw.adam, optax.adam),
    (aw.scale_by_adam, optax.scale_by_adam),
    (aw.add_decayed_weights, optax.add_decayed_weights),
]


@pytest.mark.parametrize("ours, theirs", OPTAX_TWINS, ids=lambda f: f.__name__)
def test_signature_is_optaxs(ours, theirs):
    """Every optax parameter has the same name, position, kind and default here; additions come
    after them, keyword-only, so optax code calls adamw_jax unchanged."""
    mine = list(inspect.signature(ours).parameters.values())
    peer = list(inspect.signature(theirs).parameters.values())
    positional = [p.name for p in peer if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in mine if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == positional
    by_name = {p.name: p for p in mine}
    for parameter in peer:
        assert by_name[parameter.name].kind == parameter.kind, parameter.name
        assert by_name[parameter.name].default == parameter.default, parameter.name


def _constant_gradient_run(optimizer: optax.GradientTransformation, steps: int = 100) -> float:
    """The issue's case: ``w = 5`` stepped ``steps`` times by a constant gradient 0.1, jitted."""
    params = {"w": jnp.float32(5.0)}

    @jax.jit
    def step(params, state):
        updates, state = optimizer.update({"w": jnp.float32(0.1)}, state, params)
        return optax.apply_updates(params, updates), state

    state = optimizer.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return float(params["w"])


def _constant_gradient_float64(
    learning_rate: float, weight_decay: float, steps: int = 100
) -> float:
    w, m, v = 5.0, 0.0, 0.0
    for t in range(1, steps + 1):
        m, v = 0.9 * m + 0.1 * 0.1, 0.999 * v + 0.001 * 0.1**2
        direction = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        w -= learning_rate * (direction + weight_decay * w)
    return w


@pytest.mark.parametrize("arguments", [(1e-2,), (1e-3, 0.9, 0.999, 1e-8, 0.0, None, 1e-4)])
def test_swapping_optax_adamw_keeps_the_trajectory(arguments):
    """The same call (defaults, or optax's seven positionals) gives optax's run. They differ by
    optax's float32 ``1 - 0.999**t`` only: ``float32(0.999)`` is 1.29e-8 above 0.999, a relative
    error δ/(1 - β2) = 1.29e-5 in v̂, so 6.4e-6 in each step of size ``lr`` (|m̂/√v̂| = 1 here):
    at most ``steps·lr·6.4e-6`` apart. adamw_jax forms ``1 - β^t`` without that cancellation
    (DESIGN §3) and is float32 rounding (100 steps of ½ ulp(4)) away from float64."""
    learning_rate = arguments[0]
    weight_decay = arguments[6] if len(arguments) > 6 else 1e-4
    ours = _constant_gradient_run(aw.adamw(*arguments))
    peer = _constant_gradient_run(optax.adamw(*arguments))
    exact = _constant_gradient_float64(learning_rate, weight_decay)
    assert abs(ours - peer) <= 100 * learning_rate * 6.5e-6
    assert abs(ours - exact) <= 100 * 0.5 * np.spacing(np.float32(4.0))
    assert abs(ours - exact) < abs(peer - exact) or ours == peer


def test_optax_positional_order_is_mu_dtype_then_weight_decay():
    positional = aw.adamw(1e-3, 0.8, 0.99, 1e-7, 1e-9, jnp.bfloat16, 0.3, {"w": True})
    named = aw.adamw(
        1e-3,
        b1=0.8,
        b2=0.99,
        eps=1e-7,
        eps_root=1e-9,
        mu_dtype=jnp.bfloat16,
        weight_decay=0.3,
        mask={"w": True},
    )
    assert _constant_gradient_run(positional, 5) == _constant_gradient_run(named, 5)
    assert (
        aw.adamw(1e-3, 0.8, 0.99, 1e-7, 1e-9, jnp.bfloat16)
        .init({"w": jnp.ones(2)})[0]
        .mu["w"]
        .dtype
        == jnp.bfloat16
    )
    assert (
        aw.adam(1e-3, 0.8, 0.99, 1e-7, 0.0, jnp.bfloat16).init({"w": jnp.ones(2)})[0].mu["w"].dtype
        == jnp.bfloat16
    )


def _structure_and_dtypes(tree):
    return jax.tree_util.tree_map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("mu_dtype", [None, jnp.bfloat16, jnp.float32, jnp.float16])
def test_abstract_init_has_optaxs_state_dtypes(param_dtype, mu_dtype):
    """float16 params are left out: their second moment is kept out of float16's range on
    purpose (float32, or block-scaled for large leaves: adamw_jax.lowbit), where optax's is not."""
    abstract = {
        "w": jax.ShapeDtypeStruct((64, 80), param_dtype),
        "b": jax.ShapeDtypeStruct((80,), param_dtype),
        "s": jax.ShapeDtypeStruct((), param_dtype),
    }
    ours = jax.eval_shape(aw.adamw(1e-3, mu_dtype=mu_dtype).init, abstract)[0]
    peer = jax.eval_shape(optax.adamw(1e-3, mu_dtype=mu_dtype).init, abstract)[0]
    for field in ("count", "mu", "nu"):
        assert _structure_and_dtypes(getattr(ours, field)) == _structure_and_dtypes(
            getattr(peer, field)
        ), field


def _sharded_run(optimizer, mesh, params):
    """Three jitted steps on ``params`` (already placed on ``mesh``): the last updates and state."""
    step = jax.jit(optimizer.update)
    with jax.set_mesh(mesh):
        state = jax.jit(optimizer.init)(params)
        for t in range(3):
            grads = jax.tree_util.tree_map(lambda p: jnp.cos(p * (t + 1)), params)
            updates, state = step(grads, state, params)
            params = optax.apply_updates(params, updates)
    return updates, state


@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto])
def test_sharded_params_give_optaxs_state_shardings_and_values(axis_type):
    """Unfused adamw on 8 devices, float32 and bfloat16 leaves sharded along "data" and a
    replicated scalar: every moment and update is sharded like optax's. float32 values are
    optax's up to its float32 ``1 - β^t`` (a relative 6.4e-6 of each step, see above: 1e-5, or
    1e-7 absolute where a moment crosses 0); optax
    computes the bfloat16 leaf in bfloat16 with bfloat16 hyperparameters (adamw_jax in float32,
    DESIGN §3), so that leaf is held to the single-device run instead, bit for bit."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    specs = {"w": P("data", None), "b": P("data"), "s": P()}
    values = {
        "w": jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32).reshape(16, 4),
        "b": jnp.linspace(-1.0, 1.0, 16, dtype=jnp.bfloat16),
        "s": jnp.float32(0.5),
    }
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in values.items()}
    ours = _sharded_run(aw.adamw(1e-2), mesh, params)
    peer = _sharded_run(optax.adamw(1e-2), mesh, params)
    alone = _sharded_run(aw.adamw(1e-2), mesh, values)

    def parts(run):
        updates, state = run
        return {"updates": updates, "mu": state[0].mu, "nu": state[0].nu, "count": state[0].count}

    ours, peer, alone = parts(ours), parts(peer), parts(alone)
    for path, x in jax.tree_util.tree_leaves_with_path(ours):
        y, z = (_at(tree, path) for tree in (peer, alone))
        where = jax.tree_util.keystr(path)
        assert x.sharding == y.sharding, (where, x.sharding, y.sharding)
        assert x.dtype == y.dtype, where
        if x.dtype == jnp.bfloat16:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(z), err_msg=where)
        else:
            np.testing.assert_allclose(
                np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7, err_msg=where
            )


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


FLAGS = {
    "adamw": ("nesterov", "amsgrad", "maximize", "fused", "stochastic_rounding", "master_weights"),
    "adam": ("nesterov", "amsgrad", "maximize", "fused", "stochastic_rounding", "master_weights"),
    "scale_by_adam": ("nesterov", "amsgrad", "bias_correction", "stochastic_rounding"),
}


@pytest.mark.parametrize(
    "factory, flag", [(f, flag) for f, flags in FLAGS.items() for flag in flags]
)
@pytest.mark.parametrize("value", ["no", "False", 1, None])
def test_flags_must_be_bools(factory, flag, value):
    """'no' and 'False' are truthy: taken as given they would switch the option on."""
    build = getattr(aw, factory)
    learning_rate = () if factory == "scale_by_adam" else (1e-3,)
    with pytest.raises(TypeError, match=f"{flag} must be True or False"):
        build(*learning_rate, **{flag: value})
    build(*learning_rate, **{flag: np.bool_(False)})  # NumPy's bool is a bool


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda v: aw.adamw(v), "learning_rate"),
        (lambda v: aw.adam(v), "learning_rate"),
        (lambda v: aw.adamw(1e-3, eps=v), "eps"),
        (lambda v: aw.adamw(1e-3, eps_root=v), "eps_root"),
        (lambda v: aw.adamw(1e-3, weight_decay=v), "weight_decay"),
        (lambda v: aw.adamw(1e-3, b1=v), "b1"),
        (lambda v: aw.adamw(1e-3, b2=v), "b2"),
        (
            lambda v: aw.adamw(1e-3, weight_decay_mode="decoupled", peak_learning_rate=v),
            "peak_learning_rate",
        ),
        (lambda v: aw.scale_by_learning_rate(v), "learning_rate"),
        (lambda v: aw.add_decayed_weights(v), "weight_decay"),
        (lambda v: aw.decoupled_weight_decay(v), "weight_decay"),
    ],
)
@pytest.mark.parametrize("value", [float("inf"), float("nan"), np.float32("inf")])
def test_infinite_and_nan_hyperparameters_are_refused_when_built(build, name, value):
    with pytest.raises(ValueError, match=name):
        build(value)


def test_gradients_with_another_tree_than_the_params_name_the_paths():
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    for fused in (False, True):
        optimizer = aw.adamw(1e-3, fused=fused)
        state = optimizer.init(params)
        extra = {**params, "extra": jnp.ones(1)}
        with pytest.raises(
            ValueError,
            match=r"only in the gradients: \['extra'\]; only in the "
            r"parameters: none",
        ):
            optimizer.update(extra, state, params)
        with pytest.raises(ValueError, match=r"only in the parameters: \['b'\]"):
            jax.jit(optimizer.update)({"w": jnp.ones(3)}, state, params)
        if fused:
            with pytest.raises(ValueError, match="extra"):
                optimizer.step(extra, state, params)
