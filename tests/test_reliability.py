"""Reliability: bad input is named, faults stay contained, long runs do not drift.

The behaviour this file pins down is the README's "Reliability" table.
"""

from __future__ import annotations

import gc
import resource
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, max_abs_error, trajectory
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import adamw_trajectory

import adamw_jax as aw

# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_integer_and_bool_leaves_are_rejected_with_their_path(dtype):
    params = {"w": jnp.ones(3), "nested": {"step": jnp.zeros((), dtype)}}
    with pytest.raises(TypeError, match=r"nested.*step.*" + jnp.dtype(dtype).name):
        aw.adamw(1e-3, weight_decay=1e-2).init(params)


def test_empty_trees_and_none_leaves_work():
    optimizer = aw.adamw(1e-3, weight_decay=0.1)
    updates, _ = jax.jit(optimizer.update)({}, optimizer.init({}), {})
    assert updates == {}
    params = {"w": jnp.ones(2), "frozen": None}
    updates, _ = jax.jit(optimizer.update)(
        {"w": jnp.ones(2), "frozen": None}, optimizer.init(params), params
    )
    assert updates["frozen"] is None and np.all(np.isfinite(updates["w"]))


def test_state_of_another_configuration_is_named():
    params = {"w": jnp.ones(3)}
    plain, with_max = aw.scale_by_adam(), aw.scale_by_adam(amsgrad=True)
    with pytest.raises(ValueError, match="amsgrad"):
        with_max.update(params, plain.init(params))
    with pytest.raises(ValueError, match="amsgrad"):
        plain.update(params, with_max.init(params))


@pytest.mark.parametrize(
    "made_by, used_by",
    [
        (dict(), dict(maximize=True, nesterov=True)),
        (dict(fused=True), dict()),
        (dict(), dict(fused=True)),
        (dict(maximize=True), dict()),
    ],
)
def test_state_of_a_differently_configured_optimizer_is_named(made_by, used_by):
    params = {"w": jnp.ones(3)}
    state = aw.adamw(1e-3, **made_by).init(params)
    with pytest.raises(ValueError, match="differently configured"):
        jax.jit(aw.adamw(1e-3, **used_by).update)(params, state, params)
    with pytest.raises(ValueError, match="differently configured"):
        aw.adam(1e-3, **used_by).update(params, aw.adamw(1e-3, **made_by).init(params), params)


def test_state_of_another_parameter_tree_is_named():
    optimizer = aw.adamw(1e-3, weight_decay=1e-2)
    state = optimizer.init({"w": jnp.ones(3)})
    bigger = {"w": jnp.ones(3), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="state"):
        optimizer.update(bigger, state, bigger)
    reshaped = {"w": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"shape"):
        optimizer.update(reshaped, state, reshaped)


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_extreme_gradient_magnitudes_give_finite_sign_correct_updates(dtype, eps):
    """|g| from the dtype's max down to its smallest subnormal: finite moments and updates.

    Where (1 - b1)·g is still a normal float32 (|g| >= 1e-36) the step has the gradient's sign
    (for |g| > 1.8e19, where g² overflows, via the clamp of ``_numerics.limit_magnitude``; with
    eps = 0 and an underflowed v, via ``adam_ratio``'s ±1). Below that XLA flushes the moment
    to zero and the step is 0.
    """
    info = jnp.finfo(dtype)
    values = [
        float(info.max),
        -float(info.max),
        1e-30,
        float(info.tiny),
        -float(info.smallest_subnormal),
        0.0,
    ]
    g = {"w": jnp.asarray(values, dtype)}
    g32 = np.float32(g["w"])
    optimizer = aw.adam(1.0, eps=eps)
    state = optimizer.init(g)
    for _ in range(3):
        updates, state = jax.jit(optimizer.update)(g, state)
        u = np.float32(updates["w"])
        assert np.all(np.isfinite(u)), u
        assert np.all(np.isfinite(np.float32(state[0].nu["w"])))
        assert np.all(np.isfinite(np.float32(state[0].mu["w"])))
        signed = np.abs(g32) >= 1e-36
        assert np.all(np.sign(u[signed]) == -np.sign(g32[signed])), u
        assert np.all(u[g32 == 0] == 0.0)


def test_large_but_representable_gradients_match_the_reference():
    params = {"w": np.zeros(3)}
    grads = [{"w": np.array([1e18, -3e15, 1e-30])}, {"w": np.array([-2e17, 4e16, 2e-30])}]
    expected = adamw_trajectory(params, grads, learning_rate=1.0)
    actual = trajectory(aw.adam(1.0), params, grads)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a["w"], e["w"], rtol=1e-6)


def test_nan_gradient_without_a_guard_stays_in_its_element():
    """Documented: without skip_nonfinite/loss scaling, a NaN poisons only its own element."""
    params = {"w": jnp.ones(3)}
    optimizer = aw.adamw(1e-2, weight_decay=1e-2)
    g = {"w": jnp.array([jnp.nan, 1.0, -1.0])}
    updates, state = optimizer.update(g, optimizer.init(params), params)
    new = aw.apply_updates(params, updates)["w"]
    assert np.isnan(new[0]) and np.all(np.isfinite(new[1:]))
    assert np.all(np.isfinite(state[0].mu["w"][1:]))


# ----------------------------------------------------------------------------- determinism


def test_runs_are_bit_identical_and_jit_agrees_with_eager():
    params = {"w": jnp.linspace(-1, 1, 7), "b": jnp.ones(2)}
    grads = [jax.tree_util.tree_map(lambda x, i=i: jnp.sin(x * (i + 3)), params) for i in range(10)]
    optimizer = aw.adamw(1e-2, weight_decay=0.1, amsgrad=True)

    def run(update):
        p, s = params, optimizer.init(params)
        for g in grads:
            u, s = update(g, s, p)
            p = aw.apply_updates(p, u)
        return p

    jitted = jax.jit(optimizer.update)
    first, second, eager = run(jitted), run(jitted), run(optimizer.update)
    for k in params:
        np.testing.assert_array_equal(first[k], second[k])
        np.testing.assert_allclose(eager[k], first[k], rtol=2e-6, atol=2e-7)


# ----------------------------------------------------------------------------- long runs


def test_soak_1e5_steps_stays_on_the_float64_reference():
    steps = 100_000
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=6)}
    scale = 10.0 ** rng.uniform(-2, 1, size=(steps, 1))
    g = (rng.normal(size=(steps, 6)) * scale).astype(np.float32).astype(np.float64)
    grads = [{"w": row} for row in g]
    rate = lambda t: 1e-3 * (0.5 + 0.5 * np.cos(np.pi * t / steps))  # noqa: E731
    schedule = lambda t: 1e-3 * (0.5 + 0.5 * jnp.cos(jnp.pi * t / steps))  # noqa: E731
    expected = adamw_trajectory(params, grads, learning_rate=rate, weight_decay=0.1)
    actual = trajectory(aw.adamw(schedule, weight_decay=0.1), params, grads)
    assert max_abs_error(actual, expected) <= float32_tolerance(
        expected
    )  # measured: 2.2e-6 of 1.5e-4


def test_repeated_steps_do_not_recompile_or_grow_memory():
    params = {"w": jnp.ones((64, 64)), "b": jnp.zeros(64)}
    optimizer = aw.adamw(1e-3, weight_decay=0.1)
    step = jax.jit(lambda g, s, p: optimizer.update(g, s, p), donate_argnums=(1,))
    state = optimizer.init(params)
    for _ in range(200):
        _, state = step(params, state, params)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2000):
        _, state = step(params, state, params)
    jax.block_until_ready(state)
    gc.collect()
    assert step._cache_size() == 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20_000  # KiB


# ----------------------------------------------------------------------------- fuzzing


class Pair(NamedTuple):
    left: jax.Array
    right: object


def _pytrees():
    shapes = st.sampled_from([(), (0,), (1,), (3,), (2, 3), (0, 4), (2, 1, 2)])
    dtypes = st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16])
    leaf = st.builds(
        lambda s, d, seed: jnp.asarray(np.random.default_rng(seed).normal(size=s), d),
        shapes,
        dtypes,
        st.integers(0, 99),
    )
    return st.recursive(
        st.one_of(leaf, st.none()),
        lambda children: st.one_of(
            st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
            st.lists(children, max_size=3),
            st.tuples(children, children),
            st.builds(Pair, children, children),
        ),
        max_leaves=6,
    )


@given(
    params=_pytrees(),
    lr=st.floats(0.0, 1.0),
    b1=st.floats(0.0, 0.999),
    b2=st.floats(0.0, 0.9999),
    eps=st.floats(0.0, 1e-3),
    weight_decay=st.floats(0.0, 1.0),
    amsgrad=st.booleans(),
    eps_mode=st.sampled_from(["adam", "hat"]),
    mode=st.sampled_from(["coupled", "decoupled"]),
)
def test_fuzz_adamw_on_random_pytrees(
    params, lr, b1, b2, eps, weight_decay, amsgrad, eps_mode, mode
):
    optimizer = aw.adamw(
        lr,
        b1,
        b2,
        eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        eps_mode=eps_mode,
        weight_decay_mode=mode,
    )
    state = optimizer.init(params)
    grads = jax.tree_util.tree_map(lambda p: jnp.cos(p.astype(jnp.float32)).astype(p.dtype), params)
    updates, state = jax.jit(optimizer.update)(grads, state, params)
    new = aw.apply_updates(params, updates)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
    for p, n in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new)):
        assert n.dtype == p.dtype and n.shape == p.shape
        assert np.all(np.isfinite(np.float32(n)))


# Every public transform, built with valid random hyperparameters: `x` in [0, 1) picks them.
TRANSFORMS = {
    "scale_by_adam": lambda x: aw.scale_by_adam(0.9 * x, 0.5 + 0.49 * x, amsgrad=x > 0.5),
    "add_decayed_weights": lambda x: aw.add_decayed_weights(x),
    "decoupled_weight_decay": lambda x: aw.decoupled_weight_decay(x * 1e-3),
    "scale_by_learning_rate": lambda x: aw.scale_by_learning_rate(x),
    "clip_by_value": lambda x: aw.clip_by_value(0.1 + x),
    "clip_by_norm": lambda x: aw.clip_by_norm(0.1 + x),
    "clip_by_global_norm": lambda x: aw.clip_by_global_norm(0.1 + x),
    "accumulate_gradients": lambda x: aw.accumulate_gradients(1 + int(3 * x), inner=aw.adamw(x)),
    "param_ema": lambda x: aw.param_ema(x, overwrite_every=2),
    "loss_scaling": lambda x: aw.loss_scaling(2.0 ** int(16 * x)),
    "skip_nonfinite": lambda x: aw.skip_nonfinite(aw.adamw(x), max_consecutive=2),
    "inject_hyperparams": lambda x: aw.inject_hyperparams(aw.adamw)(
        learning_rate=x, weight_decay=x
    ),
    "reduce_on_plateau": lambda x: aw.reduce_on_plateau(factor=0.1 + 0.8 * x, patience=1),
    "torch_adamw": lambda x: aw.presets.torch_adamw(lr=x, amsgrad=x > 0.5),
    "torch_adam": lambda x: aw.presets.torch_adam(lr=x, weight_decay=x),
    "keras_adamw": lambda x: aw.presets.keras_adamw(x, clipnorm=1.0, use_ema=True),
    "adamw_fused": lambda x: aw.adamw(x, weight_decay=x, fused=True),
}


@settings(max_examples=60)
@given(
    params=_pytrees(),
    name=st.sampled_from(sorted(TRANSFORMS)),
    x=st.floats(0.0, 0.999),
    poison=st.booleans(),
)
def test_fuzz_every_public_transform(params, name, x, poison):
    """Random trees (None leaves, 0-sized and scalar leaves, three float dtypes), two jitted
    steps, the second with a NaN gradient when ``poison``: the output keeps the tree, shapes and
    dtypes, and is finite on finite gradients."""
    transform = optax.with_extra_args_support(TRANSFORMS[name](x))
    state = transform.init(params)
    update = jax.jit(lambda g, s, p: transform.update(g, s, p, value=jnp.float32(1.0)))
    grads = jax.tree_util.tree_map(lambda p: jnp.cos(p.astype(jnp.float32)).astype(p.dtype), params)
    updates, state = update(grads, state, params)
    for p, u in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(updates)):
        assert u.shape == p.shape and np.all(np.isfinite(np.float32(u)))
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(grads)
    if poison:
        bad = jax.tree_util.tree_map(lambda g: jnp.full_like(g, jnp.nan), grads)
        updates, state = update(bad, state, params)
        assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(grads)


# ----------------------------------------------------------------------------- the README's chains


def _readme_chains(fused: bool) -> dict[str, optax.GradientTransformation]:
    """(a) adamw, (b) guarded clipping + adamw, (c) the README's full mixed-precision chain."""
    return {
        "adamw": aw.adamw(1e-3, fused=fused),
        "skip-clip-adamw": aw.skip_nonfinite(
            optax.chain(aw.clip_by_global_norm(1.0), aw.adamw(1e-3, fused=fused))
        ),
        "readme": optax.chain(
            aw.loss_scaling(2.0**15),
            aw.skip_nonfinite(
                aw.accumulate_gradients(
                    4,
                    inner=optax.chain(
                        aw.clip_by_global_norm(1.0),
                        aw.adamw(
                            1e-3, mask=aw.exclude_from_weight_decay(["bias", "norm"]), fused=fused
                        ),
                    ),
                )
            ),
            aw.param_ema(0.999, accumulation_steps=4),
        ),
    }


CHAIN_CASES = [(name, fused) for fused in (False, True) for name in _readme_chains(False)]


def _run(optimizer, params, grads_stream, *, value=None):
    """Jitted steps through ``aw.apply_updates``; the (params, state) after every step."""
    step = jax.jit(optimizer.update)
    state, out = optimizer.init(params), []
    for grads in grads_stream:
        updates, state = step(grads, state, params)
        params = jax.jit(aw.apply_updates)(params, updates)
        out.append((params, state))
    return out


def _all_finite(tree) -> bool:
    return all(
        np.all(np.isfinite(np.asarray(x, np.float32)))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    )


@st.composite
def _any_magnitude_trees(draw):
    """Parameter trees (names the README's mask matches among them, 1-3 leaves, scalar to
    4096-element shapes) in float32/bfloat16/float16, and 4 steps of finite gradients of every
    magnitude their dtype holds: ``±10^e``, ``e`` uniform over 1e-45 … 3e38 (float16: 6e-8 …
    65504)."""
    names = draw(
        st.lists(
            st.sampled_from(["w", "bias", "norm", "head"]), min_size=1, max_size=3, unique=True
        )
    )
    seed = draw(st.integers(0, 2**16))
    params, specs = {}, {}
    for name in names:
        shape = draw(st.sampled_from([(), (3,), (2, 5), (4096,)]))
        dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]))
        params[name] = jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)
        specs[name] = (shape, dtype)
    rng = np.random.default_rng(seed + 1)

    def gradient(shape, dtype):
        info = jnp.finfo(dtype)
        low, high = np.log10(float(info.smallest_subnormal)), np.log10(float(info.max))
        values = rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(low, high, size=shape)
        values = np.clip(values, -float(info.max), float(info.max))
        return jnp.asarray(values.astype(np.float32), dtype)

    stream = [{n: gradient(*specs[n]) for n in names} for _ in range(4)]
    return params, stream


@pytest.mark.parametrize(
    "name, fused", CHAIN_CASES, ids=[f"{n}-{'fused' if f else 'unfused'}" for n, f in CHAIN_CASES]
)
@settings(max_examples=10)
@given(case=_any_magnitude_trees())
def test_readme_chains_stay_finite_on_finite_gradients_of_any_magnitude(name, fused, case):
    """Finite in, finite out: every step's params and state, on both paths. The sums of squares
    of these gradients overflow float32 (1e20² = 1e40): clipping scales its norm, Adam clamps
    before squaring, low-precision storage saturates."""
    params, stream = case
    for step, (new_params, state) in enumerate(_run(_readme_chains(fused)[name], params, stream)):
        assert _all_finite(new_params), (step, new_params)
        assert _all_finite(state), (step, state)
    if name != "adamw":  # nothing was finite-in, non-finite-out: no step skipped
        assert aw.skipped_steps(state) == (0, 0)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize(
    "grads",
    [{"w": jnp.full((64, 64), 1e20)}, {"w": jnp.full((1000,), 6e17)}],
    ids=["every-element-1e20", "1000-elements-6e17"],
)
def test_issue_cases_sum_of_squares_overflow_inside_the_guarded_chain(fused, grads):
    """The reported failure: the global norm's float32 sum of squares overflows; the step was NaN
    everywhere and the guard counted nothing. Now: clipped to norm 1, one finite Adam step."""
    params = jax.tree_util.tree_map(jnp.ones_like, grads)
    for name in ("skip-clip-adamw", "readme"):
        stream = [grads] * 4
        ((new_params, state),) = _run(_readme_chains(fused)[name], params, stream)[-1:]
        assert _all_finite(new_params) and _all_finite(state)
        assert aw.skipped_steps(state) == (0, 0)
        moved = np.asarray(params["w"]) - np.asarray(new_params["w"])
        assert np.all(moved > 0) and np.all(moved < 1.1e-3 * len(stream))  # lr 1e-3 per step


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_skipped_step_leaves_params_and_guarded_state_bit_identical(fused, bad):
    """A NaN/Inf element on the third of four steps. (b): params and the whole guarded state bit
    for bit, the step counted. (c): params and everything inside skip_nonfinite (accumulator,
    moments, counters) bit for bit; the loss scale halves (its rule), and param_ema, which the
    README places after the guard, still averages the unchanged params."""
    params = {"w": jnp.linspace(-1, 1, 4096, dtype=jnp.float16), "bias": jnp.ones(3)}
    finite = [
        jax.tree_util.tree_map(lambda p, i=i: jnp.cos(p * (i + 1)).astype(p.dtype), params)
        for i in range(4)
    ]
    poisoned = list(finite)
    poisoned[2] = dict(finite[2], w=finite[2]["w"].at[17].set(bad))
    for name in ("skip-clip-adamw", "readme"):
        runs = _run(_readme_chains(fused)[name], params, poisoned)
        (before_params, before), (after_params, after) = runs[1], runs[2]
        jax.tree_util.tree_map(np.testing.assert_array_equal, after_params, before_params)
        guard = lambda state: state if name != "readme" else state[1]  # noqa: E731
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, guard(after).inner_state, guard(before).inner_state
        )
        assert aw.skipped_steps(after) == (1, 1)
        if name == "readme":
            assert float(aw.current_loss_scale(after)) == float(aw.current_loss_scale(before)) / 2
        assert _all_finite(runs[-1][0]) and aw.skipped_steps(runs[-1][1]) == (0, 1)
