"""The native CPU kernel of adamw(fused=True): the same numbers as the XLA pass and the float64
reference for every option and every moment storage format (bf16/f16, stochastic rounding,
blockwise f16 and int8), in place, differentiable, batched, and a
clear fallback without a compiler.

The test session forces 8 host devices, where the kernel is off by default (GSPMD cannot split
a custom call), so every test here turns it on with ADAMW_JAX_NATIVE=1 and checks that it ran.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error
from hypothesis import given
from hypothesis import strategies as st
from reference import adamw_trajectory

import adamw_jax as aw
from adamw_jax.fused import native
from adamw_jax.fused._group_pass import LEAVES_PER_CALL
from fused.test_transformation import OPTIONS, _adamw_kwargs

STEPS = 60
PARAMS = make_params(3)
GRADS = gradient_stream(PARAMS, STEPS, seed=4)


@pytest.fixture(autouse=True)
def native_kernel(monkeypatch):
    monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, "1")
    assert native.available(), "the kernel must build wherever the tests run (g++ is needed)"


def _one_pass(optimizer):
    """``(grads, state, params) -> (params, state)``: ``update_and_apply`` with ``optimizer``."""
    return functools.partial(aw.update_and_apply, optimizer)


def _uses_kernel(fn, *args) -> bool:
    return native.TARGET_NAME in jax.jit(fn).lower(*args).as_text()


def _one_pass_trajectory(optimizer, params, grads):
    """The params after each ``update_and_apply`` step, jitted in one ``lax.scan``."""
    p0 = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    stacked = {k: jnp.asarray(np.stack([g[k] for g in grads]), jnp.float32) for k in params}

    def run(p, gs):
        def step(carry, g):
            p, state = aw.update_and_apply(optimizer, g, carry[1], carry[0])
            return (p, state), p

        return jax.lax.scan(step, (p, optimizer.init(p)), gs)[1]

    assert _uses_kernel(run, p0, stacked)
    history = jax.device_get(jax.jit(run)(p0, stacked))
    return [{k: np.asarray(history[k][i], np.float64) for k in params} for i in range(len(grads))]


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_one_pass_step_matches_reference(name):
    options = {"weight_decay": 0.0, **OPTIONS[name]}
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, **options)
    actual = _one_pass_trajectory(
        aw.adamw(1e-2, fused=True, **_adamw_kwargs(options)), PARAMS, GRADS
    )
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)


def test_schedules_and_decoupled_decay_match_reference():
    schedule = aw.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 10, STEPS, 1e-4)
    expected = adamw_trajectory(
        PARAMS,
        GRADS,
        learning_rate=lambda t: float(schedule(t)),
        b1=lambda t: 0.85 + 0.1 * t / STEPS,
        weight_decay=1e-3,
        weight_decay_mode="decoupled",
        peak_learning_rate=1e-2,
    )
    optimizer = aw.adamw(
        schedule,
        b1=lambda t: 0.85 + 0.1 * t / STEPS,
        weight_decay=1e-3,
        weight_decay_mode="decoupled",
        peak_learning_rate=1e-2,
        fused=True,
    )
    actual = _one_pass_trajectory(optimizer, PARAMS, GRADS)
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)


def test_matches_optax_adamw():
    optimizer = optax.adamw(1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1)
    p0 = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    state, p = optimizer.init(p0), p0
    preset = aw.adamw(1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1, fused=True)
    ours_state, ours = preset.init(p0), p0
    step = jax.jit(_one_pass(preset))
    for g in GRADS[:20]:
        g = {k: jnp.asarray(v, jnp.float32) for k, v in g.items()}
        updates, state = optimizer.update(g, state, p)
        p = optax.apply_updates(p, updates)
        ours, ours_state = step(g, ours_state, ours)
    for key in PARAMS:  # 20 steps of |u| ~ 1e-2: a few float32 ulps of |θ| ~ 1
        np.testing.assert_allclose(ours[key], p[key], rtol=0, atol=2e-6)


@given(
    shapes=st.lists(st.lists(st.integers(0, 5), max_size=3).map(tuple), min_size=1, max_size=6),
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([0.0, 1e-8, 1e-1]),
    weight_decay=st.floats(0.0, 0.5),
    amsgrad=st.booleans(),
    nesterov=st.booleans(),
    maximize=st.booleans(),
    eps_mode=st.sampled_from(["adam", "hat"]),
    seed=st.integers(0, 2**16),
)
def test_any_tree_and_options_step_like_the_unfused_chain(
    shapes, b1, b2, eps, weight_decay, amsgrad, nesterov, maximize, eps_mode, seed
):
    rng = np.random.default_rng(seed)
    params = {f"p{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(shapes)}
    grads = [
        jax.tree_util.tree_map(
            lambda p: jnp.asarray(rng.normal(size=p.shape) * 10.0 ** rng.integers(-8, 3), p.dtype),
            params,
        )
        for _ in range(3)
    ]
    kwargs = dict(
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        nesterov=nesterov and eps_mode == "adam",
        maximize=maximize,
        eps_mode=eps_mode,
    )
    fused, plain = aw.adamw(1e-2, fused=True, **kwargs), aw.adamw(1e-2, **kwargs)
    one_pass = jax.jit(_one_pass(fused))
    two_calls = jax.jit(_one_pass(plain))
    fused_update = jax.jit(fused.update)
    (p1, s1), (p2, s2) = (params, fused.init(params)), (params, plain.init(params))
    s3 = fused.init(params)
    for g in grads:
        updates, s3 = fused_update(g, s3, p2)
        expected_updates = plain.update(g, s2, p2)[0]
        p1, s1 = one_pass(g, s1, p1)
        p2, s2 = two_calls(g, s2, p2)
        for key in params:
            # |u| <= η·(|n̂|/d + λ|θ|) and each is a few float32 roundings: 1e-5 relative
            np.testing.assert_allclose(p1[key], p2[key], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(updates[key], expected_updates[key], rtol=1e-5, atol=1e-7)
            assert np.all(np.isfinite(p1[key]))


def test_many_leaves_mixed_dtypes_and_large_leaves():
    """Over LEAVES_PER_CALL small leaves (several calls threading the moments), a leaf large
    enough for a buffer of its own, bf16 leaves (the XLA pass) and a mask."""
    rng = np.random.default_rng(0)
    params = {
        f"s{i}": jnp.asarray(rng.normal(size=(i % 7 + 1, 3)), jnp.float32)
        for i in range(LEAVES_PER_CALL + 40)
    }
    params["big"] = jnp.asarray(rng.normal(size=(300, 300)), jnp.float32)
    params["half"] = jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16)
    mask = {k: not k.startswith("s1") for k in params}
    grads = [
        jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(3)
    ]
    fused = aw.adamw(1e-2, weight_decay=0.1, mask=mask, amsgrad=True, fused=True)
    plain = aw.adamw(1e-2, weight_decay=0.1, mask=mask, amsgrad=True)
    assert _uses_kernel(_one_pass(fused), grads[0], fused.init(params), params)
    fused_step, plain_step = jax.jit(_one_pass(fused)), jax.jit(_one_pass(plain))
    (p1, s1), (p2, s2) = (params, fused.init(params)), (params, plain.init(params))
    for g in grads:
        p1, s1 = fused_step(g, s1, p1)
        p2, s2 = plain_step(g, s2, p2)
    for key in params:
        np.testing.assert_allclose(
            np.asarray(p1[key], np.float32), np.asarray(p2[key], np.float32), rtol=1e-5, atol=1e-7
        )
        assert p1[key].dtype == params[key].dtype and p1[key].shape == params[key].shape


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(weight_decay=0.1),
        dict(amsgrad=True, nesterov=True, maximize=True),
        dict(eps_mode="hat", eps=0.0, weight_decay=0.2, amsgrad=True),
        dict(b1=0.0, eps=1e-1),
    ],
)
def test_update_of_a_large_leaf_writes_the_moments_natively_and_no_update_buffer(kwargs):
    """``update`` on a leaf with a buffer of its own: the kernel writes the moments, XLA forms
    ``u`` from them inside the caller's ``θ + u`` (no scratch buffer the size of the leaf, which
    would cost its page faults every step), with the unfused chain's numbers."""
    rng = np.random.default_rng(5)
    params = {"w": jnp.asarray(rng.normal(size=(512, 256)), jnp.float32), "b": jnp.ones(3)}
    fused, plain = aw.adamw(1e-2, fused=True, **kwargs), aw.adamw(1e-2, **kwargs)

    def two_calls(optimizer):
        def step(params, state, grads):  # donated arguments in the order of the results
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return step

    state, grads = fused.init(params), jax.tree.map(jnp.ones_like, params)
    assert _uses_kernel(two_calls(fused), params, state, grads)
    compiled = (
        jax.jit(two_calls(fused), donate_argnums=(0, 1)).lower(params, state, grads).compile()
    )
    assert compiled.memory_analysis().temp_size_in_bytes < params["w"].nbytes // 8
    (p1, s1), (p2, s2) = (params, state), (params, plain.init(params))
    fused_step, plain_step = jax.jit(two_calls(fused)), jax.jit(two_calls(plain))
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        p1, s1 = fused_step(p1, s1, grads)
        p2, s2 = plain_step(p2, s2, grads)
    for key in params:  # |u| ~ 1e-2 with a few float32 roundings, as in the hypothesis test above
        np.testing.assert_allclose(p1[key], p2[key], rtol=1e-5, atol=1e-7)


def test_one_pass_step_runs_in_place_with_donation():
    params = {"w": jnp.ones((512, 256)), "b": jnp.ones((256,)), "s": jnp.ones((7,))}
    optimizer = aw.adamw(1e-3, fused=True, weight_decay=1e-2)
    state = optimizer.init(params)
    step = jax.jit(lambda p, s, g: aw.update_and_apply(optimizer, g, s, p), donate_argnums=(0, 1))
    compiled = step.lower(params, state, params).compile()
    # The 12 scalars and their copies in native._visible_cost (6 KiB): nothing buffer-sized.
    assert compiled.memory_analysis().temp_size_in_bytes < 8192
    assert " copy(" not in compiled.as_text()
    pointer = params["w"].unsafe_buffer_pointer()
    new_params, _ = compiled(params, state, jax.tree_util.tree_map(jnp.ones_like, params))
    assert new_params["w"].unsafe_buffer_pointer() == pointer


def test_one_pass_step_is_dispatched_asynchronously():
    """XLA:CPU runs a program it costs under 1000 flops inline and counts a custom call as zero:
    the step carries a visible cost so that the call returns futures, as any XLA program does."""
    params = {"w": jnp.ones((1 << 22,))}  # 4M floats: over 100 MB of traffic, milliseconds
    optimizer = aw.adamw(1e-3, fused=True, weight_decay=1e-2)
    step = jax.jit(_one_pass(optimizer), donate_argnums=(1, 2))
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    compiled = step.lower(grads, optimizer.init(params), params).compile()
    assert compiled.cost_analysis()["flops"] >= 1000
    state = optimizer.init(params)
    for _ in range(3):
        params, state = step(grads, state, params)
        assert not params["w"].is_ready()  # the Python thread is back before the pass is done
        jax.block_until_ready(params)


def test_the_kernel_reports_bad_operands_as_an_error():
    """A malformed call fails with the kernel's message (through its future), not a crash."""
    moments = (jnp.zeros((8,)), jnp.zeros((8,)))

    def call(offset: int):
        return jax.jit(
            lambda: native.adam_step(
                jnp.zeros((12,)),
                moments,
                [],
                [jnp.ones((4,))],
                np.array([offset]),
                amsgrad=False,
                nesterov=False,
                maximize=False,
                decayed=False,
                write_params=False,
            )
        )()

    outputs, _ = call(4)  # the leaf fills the moments' second half: fine
    np.testing.assert_array_equal(outputs[0], 0.0)
    with pytest.raises(Exception, match="a leaf lies outside the moments"):
        jax.block_until_ready(call(6))


def test_undonated_inputs_are_left_intact():
    params = {"w": jnp.full((70000,), 2.0), "b": jnp.full((3,), 2.0)}
    optimizer = aw.adamw(1e-1, fused=True, weight_decay=1e-2)
    state = optimizer.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    new_params, new_state = jax.jit(_one_pass(optimizer))(grads, state, params)
    np.testing.assert_array_equal(params["w"], 2.0)
    np.testing.assert_array_equal(state.mu[0], 0.0)
    assert float(new_params["w"][0]) < 2.0 and float(new_state.mu[0][0]) > 0.0


def test_gradient_and_vmap_flow_through_the_kernel():
    """``jax.grad`` differentiates the XLA formulation (custom_jvp); ``vmap`` loops the call."""
    params = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.arange(3.0)}
    grads = jax.tree_util.tree_map(lambda p: jnp.cos(3 * p) + 0.5, params)

    def loss(learning_rate, env):
        os.environ[native.ENVIRONMENT_VARIABLE] = env
        optimizer = aw.adamw(learning_rate, eps_root=1e-8, weight_decay=0.1, fused=True)
        p, _ = aw.update_and_apply(optimizer, grads, optimizer.init(params), params)
        return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(p))

    native_grad = jax.grad(loss)(0.1, "1")
    xla_grad = jax.grad(loss)(0.1, "0")
    np.testing.assert_allclose(native_grad, xla_grad, rtol=1e-6)
    os.environ[native.ENVIRONMENT_VARIABLE] = "1"
    optimizer = aw.adamw(1e-2, fused=True, weight_decay=1e-2)
    batch = jax.tree_util.tree_map(lambda g: jnp.stack([g, 2 * g, -g]), grads)

    def step(g):
        return aw.update_and_apply(optimizer, g, optimizer.init(params), params)[0]

    batched = jax.jit(jax.vmap(step))(batch)
    for i in range(3):
        one = jax.jit(step)(jax.tree_util.tree_map(lambda g: g[i], batch))
        for key in params:
            np.testing.assert_array_equal(batched[key][i], one[key])


@pytest.mark.parametrize("eps, eps_root", [(0.0, 0.0), (1e-8, 0.0)])
def test_extreme_and_zero_gradients_step_like_the_xla_pass(eps, eps_root, monkeypatch):
    params = {"w": jnp.ones((8,)), "b": jnp.ones((4,))}
    grads = {
        "w": jnp.array([3e38, -3e38, 1e-30, -1e-30, 0.0, 1e-45, 2e19, -2e19]),
        "b": jnp.zeros((4,)),
    }
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, setting)
        optimizer = aw.adamw(1e-3, eps=eps, eps_root=eps_root, amsgrad=True, fused=True)
        step = jax.jit(_one_pass(optimizer))
        p, s = params, optimizer.init(params)
        for _ in range(3):
            p, s = step(grads, s, p)
        results.append(p)
    for key in params:
        assert np.all(np.isfinite(results[0][key]))
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-6)


def test_update_and_apply_on_any_transformation_is_update_then_apply():
    params = {"w": jnp.arange(4.0)}
    grads = {"w": jnp.ones((4,))}
    chain = optax.chain(aw.clip_by_global_norm(1.0), aw.adamw(1e-2, fused=True, weight_decay=1e-2))
    state = chain.init(params)
    p, s = jax.jit(_one_pass(chain))(grads, state, params)
    updates, expected_state = chain.update(grads, state, params)
    np.testing.assert_array_equal(p["w"], aw.apply_updates(params, updates)["w"])
    np.testing.assert_array_equal(s[1].mu[0], expected_state[1].mu[0])


def test_fused_optimizer_is_an_optax_transformation_with_a_step():
    optimizer = aw.adamw(1e-3, fused=True, weight_decay=1e-2)
    assert isinstance(optimizer, optax.GradientTransformation)
    assert isinstance(optimizer, aw.FusedTransformation)
    init, update = optimizer  # unpacks as any (init, update) pair
    assert callable(init) and callable(update) and callable(optimizer.step)
    params = {"w": jnp.ones((3,))}
    with pytest.raises(ValueError, match="differently configured optimizer"):
        optimizer.step(params, aw.adamw(1e-3, weight_decay=1e-2).init(params), params)
    with pytest.raises(ValueError, match="amsgrad"):
        optimizer.step(params, aw.adamw(1e-3, fused=True, amsgrad=True).init(params), params)


@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit])
def test_sharded_parameters_keep_their_values_on_eight_devices(axis_type):
    """ADAMW_JAX_NATIVE=1 with sharded arrays: on Auto axes GSPMD runs the call on gathered
    operands (the reason auto mode keeps the XLA pass there), arrays split along Explicit axes
    keep the XLA pass (a custom call has no sharding rule); the numbers are the same."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    params = {"w": jax.device_put(jnp.linspace(-1, 1, 64), sharding)}
    grads = {"w": jax.device_put(jnp.sin(jnp.arange(64.0)), sharding)}
    optimizer = aw.adamw(1e-2, fused=True)
    p, _ = jax.jit(_one_pass(optimizer))(grads, optimizer.init(params), params)
    updates, _ = aw.adamw(1e-2).update(grads, aw.adamw(1e-2).init(params), params)
    np.testing.assert_allclose(p["w"], aw.apply_updates(params, updates)["w"], rtol=0, atol=1e-7)


def test_policy_follows_the_environment_variable(monkeypatch):
    assert native.enabled()
    monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, "0")
    assert not native.enabled()
    params = {"w": jnp.ones((3,))}
    optimizer = aw.adamw(1e-3, fused=True, weight_decay=1e-2)
    assert not _uses_kernel(_one_pass(optimizer), params, optimizer.init(params), params)
    monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, "1")
    jax.config.update("jax_enable_x64", True)
    try:  # float64 mode computes the fused step in float64: the XLA pass
        assert not native.enabled()
    finally:
        jax.config.update("jax_enable_x64", False)
    monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, "auto")
    assert jax.device_count() == 8 and not native.enabled()  # sharding-safe default
    monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match="ADAMW_JAX_NATIVE"):
        native.enabled()


def test_without_a_compiler_the_xla_pass_runs_with_a_warning(tmp_path):
    script = textwrap.dedent("""
        import warnings
        import jax, jax.numpy as jnp
        import adamw_jax as aw
        from adamw_jax.fused import native
        params = {"w": jnp.arange(3.0)}
        optimizer = aw.adamw(1e-2, weight_decay=1e-2, fused=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p, _ = jax.jit(lambda g, s, p: aw.update_and_apply(optimizer, g, s, p))(
                params, optimizer.init(params), params)
        assert not native.available()
        messages = [str(w.message) for w in caught if "native CPU kernel" in str(w.message)]
        assert len(messages) == 1 and "no C++ compiler" in messages[0], messages
        print(float(p["w"][1]))
    """)
    env = dict(
        os.environ,
        ADAMW_JAX_NATIVE="1",
        CXX="no-such-compiler",
        ADAMW_JAX_CACHE_DIR=str(tmp_path),
        XLA_FLAGS="",
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert abs(float(done.stdout) - (1.0 - 1e-2 * (1 + 1e-2))) < 1e-6  # sign step plus decay


def test_build_is_cached_per_source_and_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMW_JAX_CACHE_DIR", str(tmp_path))
    library = native.build()
    assert library.parent == tmp_path and library.stat().st_size > 0
    modified = library.stat().st_mtime_ns
    assert native.build() == library and library.stat().st_mtime_ns == modified
    assert [p.name for p in tmp_path.iterdir()] == [library.name]  # no partial file left


def test_bfloat16_moments_are_stored_as_the_xla_pass_stores_them(monkeypatch):
    """mu/nu in bfloat16: the kernel rounds to nearest even in the same pass. The float32 value
    before rounding differs from XLA's by its fused multiply-adds, so a value that falls on a
    rounding boundary can land one bf16 ulp away; everything else is bit for bit."""
    rng = np.random.default_rng(1)
    params = {
        "big": jnp.asarray(rng.normal(size=(256, 300)), jnp.float32),
        "small": jnp.asarray(rng.normal(size=(40,)), jnp.float32),
    }
    grads = [
        jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(4)
    ]
    kwargs = dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, amsgrad=True, weight_decay=0.1)
    runs = []
    for setting in ("1", "0"):
        monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, setting)
        optimizer = aw.adamw(1e-2, fused=True, **kwargs)
        step = jax.jit(_one_pass(optimizer))
        assert _uses_kernel(step, grads[0], optimizer.init(params), params) == (setting == "1")
        p, s = params, optimizer.init(params)
        for g in grads:
            p, s = step(g, s, p)
        runs.append((p, s))
    (p_native, s_native), (p_xla, s_xla) = runs
    for ours, theirs in zip(
        s_native.mu + s_native.nu + s_native.nu_max, s_xla.mu + s_xla.nu + s_xla.nu_max
    ):
        assert ours.dtype == theirs.dtype == jnp.bfloat16
        ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
        assert np.mean(ours != theirs) < 1e-3
        np.testing.assert_allclose(ours, theirs, rtol=2.0**-7, atol=1e-30)  # one bf16 ulp
    for key in params:  # a moment one bf16 ulp away moves a step of 1e-2 by < 1e-4
        np.testing.assert_allclose(p_native[key], p_xla[key], rtol=0, atol=1e-4)


LOW_PRECISION_FORMATS = {
    "bf16 + SR": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, stochastic_rounding=True),
    "bf16 mu, f32 nu": dict(mu_dtype=jnp.bfloat16),
    "f16": dict(mu_dtype=jnp.float16, nu_dtype=jnp.float16),
    "f16 + SR, amsgrad": dict(
        mu_dtype=jnp.float16, nu_dtype=jnp.float16, stochastic_rounding=True, amsgrad=True
    ),
    "bf16 mu, f16 nu": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.float16),
    "int8": dict(mu_dtype="int8", nu_dtype="int8"),
    "int8 + SR, amsgrad": dict(
        mu_dtype="int8", nu_dtype="int8", stochastic_rounding=True, amsgrad=True
    ),
}
# Blocks of 256 exactly, a leaf ending mid-block, two leaves packed into one block group, one
# alone in its shape, and a small leaf (its group keeps float32 where blocks would be used).
LOW_PRECISION_SHAPES = {"a": (4099,), "b": (300, 70), "c": (100,), "d": (70000,)}


def _low_precision_runs(monkeypatch, kwargs, steps, special=None):
    """``[(params, state)]`` after ``steps`` jitted ``update_and_apply`` steps, with the kernel
    and with the XLA pass (checked by the lowered text); ``special`` at element 7 of each
    gradient in the first step."""
    rng = np.random.default_rng(5)
    params = {
        k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in LOW_PRECISION_SHAPES.items()
    }
    grads = [
        {k: jnp.asarray(rng.normal(size=p.shape), jnp.float32) for k, p in params.items()}
        for _ in range(steps)
    ]
    if special is not None:
        grads[0] = {
            k: g.reshape(-1).at[7].set(special).reshape(g.shape) for k, g in grads[0].items()
        }
    runs = []
    for setting in ("1", "0"):
        monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, setting)
        optimizer = aw.adamw(1e-2, fused=True, weight_decay=0.1, **kwargs)
        step = jax.jit(_one_pass(optimizer))
        assert _uses_kernel(step, grads[0], optimizer.init(params), params) == (setting == "1")
        p, s = params, optimizer.init(params)
        for g in grads:
            p, s = step(g, s, p)
        runs.append(jax.device_get((p, s)))
    return runs


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise: equal bit patterns, or both NaN (a NaN's payload is not part of a format)."""
    if a.dtype.kind in "iu":
        return a == b
    a, b = a.astype(np.float32), b.astype(np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


@pytest.mark.parametrize("special", [None, np.nan, np.inf, 1e38])
@pytest.mark.parametrize("name", sorted(LOW_PRECISION_FORMATS))
def test_low_precision_formats_store_what_the_xla_pass_stores(name, special, monkeypatch):
    """Every storage format runs in the kernel and stores what the XLA pass stores, stochastic
    rounding included (the same hash of the same counter), with NaN, Inf and 1e38 gradient
    elements, over 4 steps. XLA contracts β·m + (1-β)·g into a fused multiply-add (the kernel
    rounds both products), so a value on a rounding boundary, or a block's absmax (its scale),
    can land one unit away, and the next steps carry that on: at most 2% of the stored values
    differ (measured: under 0.1% of values, up to 40% of the scales, by one float32 ulp), and the
    parameters agree to 2e-3 (a moment one 8-bit code away moves a step of |u| <= 1e-2 by a
    fraction of it), with NaN/Inf at the same elements."""
    (p_native, s_native), (p_xla, s_xla) = _low_precision_runs(
        monkeypatch, LOW_PRECISION_FORMATS[name], 4, special
    )
    for ours, theirs in zip(jax.tree.leaves(s_native), jax.tree.leaves(s_xla)):
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        if ours.ndim == 2 or ours.dtype != np.float32:  # stored values, not block scales
            assert np.mean(~_same_bits(ours, theirs)) <= 0.02
    for key in p_native:
        finite = np.isfinite(p_xla[key])
        np.testing.assert_array_equal(np.isfinite(p_native[key]), finite)
        np.testing.assert_allclose(p_native[key][finite], p_xla[key][finite], rtol=0, atol=2e-3)


def test_stochastic_bfloat16_moments_are_the_xla_pass_bit_for_bit(monkeypatch):
    """bf16 with stochastic rounding from zero moments: the first step has no multiply-add to
    contract, so the kernel's noise (the same counter hash) gives XLA's bits exactly."""
    kwargs = LOW_PRECISION_FORMATS["bf16 + SR"]
    (_, s_native), (_, s_xla) = _low_precision_runs(monkeypatch, kwargs, 1, np.nan)
    for ours, theirs in zip(jax.tree.leaves(s_native), jax.tree.leaves(s_xla)):
        assert np.all(_same_bits(np.asarray(ours), np.asarray(theirs)))


NONFINITE_SHAPES = {"small": (8,), "other": (3,), "large": (256, 256)}  # large: its own buffer
NONFINITE_CASES = {  # (which array, value) put at element 5 of "small" and of "large"
    "nan_gradient": ("grads", np.nan),
    "inf_gradient": ("grads", np.inf),
    "negative_inf_gradient": ("grads", -np.inf),
    "nan_parameter": ("params", np.nan),
}


def _with_nonfinite(tree, value):
    tree = dict(tree)
    for key in ("small", "large"):
        tree[key] = tree[key].reshape(-1).at[5].set(value).reshape(tree[key].shape)
    return tree


def _two_steps(optimizer, door, params, grads, finite_grads):
    """Params after a step on ``grads`` and one on ``finite_grads`` (jitted), and the moments'
    NaN count (flat buffers and leaves alike)."""

    def two_calls(g, s, p):
        updates, s = optimizer.update(g, s, p)
        return optax.apply_updates(p, updates), s

    step = jax.jit(two_calls if door == "update" else _one_pass(optimizer))
    history, state = [], optimizer.init(params)
    for g in (grads, finite_grads):
        params, state = step(g, state, params)
        history.append(jax.device_get(params))
    return history, sum(int(np.sum(np.isnan(x))) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("case", sorted(NONFINITE_CASES))
def test_nonfinite_inputs_have_one_outcome_on_every_path(case, amsgrad, monkeypatch):
    """A NaN or ±Inf gradient element, or a NaN parameter, in a small (packed) and a large (own
    buffer) leaf: the unfused chain, the fused update + apply and update_and_apply, with the
    kernel and with the XLA pass, give NaN at the same elements (in the params after the step
    and after a finite one, and in the moments), and the same finite values elsewhere."""
    rng = np.random.default_rng(21)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in NONFINITE_SHAPES.items()}
    grads = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in NONFINITE_SHAPES.items()}
    where, value = NONFINITE_CASES[case]
    bad_params, bad_grads = (
        (_with_nonfinite(params, value), grads)
        if where == "params"
        else (params, _with_nonfinite(grads, value))
    )
    kwargs = dict(weight_decay=0.1, amsgrad=amsgrad)
    expected, expected_nans = _two_steps(
        aw.adamw(1e-2, **kwargs), "update", bad_params, bad_grads, grads
    )
    assert (expected_nans > 0) == (case == "nan_gradient")  # a NaN θ leaves the moments finite
    for setting in ("1", "0"):
        monkeypatch.setenv(native.ENVIRONMENT_VARIABLE, setting)
        for door in ("update", "update_and_apply"):
            history, nans = _two_steps(
                aw.adamw(1e-2, fused=True, **kwargs), door, bad_params, bad_grads, grads
            )
            assert nans == expected_nans, (setting, door)
            for got, want in zip(history, expected):
                for key in NONFINITE_SHAPES:
                    np.testing.assert_array_equal(np.isnan(got[key]), np.isnan(want[key]))
                    np.testing.assert_array_equal(np.isinf(got[key]), np.isinf(want[key]))
                    # float32 rounding of the fused pass (see test_one_pass_step_matches_reference)
                    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7)


def test_stochastic_rounding_wrapper_keeps_the_one_pass_step_on_float32_parameters():
    """adamw(stochastic_rounding=True) wraps the fused optimizer to round bf16/f16 parameters;
    with float32 parameters only, update_and_apply is the inner one-pass step (the kernel writes
    θ), and it lands where update + apply_updates lands; with a bf16 leaf it is update + apply."""
    kwargs = dict(mu_dtype="int8", nu_dtype="int8", stochastic_rounding=True, weight_decay=0.1)
    optimizer = aw.adamw(1e-2, fused=True, **kwargs)
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(64, 80)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(64, 80)), jnp.float32)}
    state = optimizer.init(params)
    step = jax.jit(_one_pass(optimizer))
    assert callable(getattr(optimizer, "step", None))  # a FusedTransformation
    assert _uses_kernel(step, grads, state, params)
    p_step, s_step = step(grads, state, params)

    def two_calls(g, s, p):
        updates, s = optimizer.update(g, s, p)
        return aw.apply_updates(p, updates), s

    p_two, s_two = jax.jit(two_calls)(grads, state, params)
    # the same moments; θ + u formed in the kernel or by XLA: float32 rounding of |u| ~ 1e-2
    np.testing.assert_allclose(p_step["w"], p_two["w"], rtol=0, atol=1e-6)
    for ours, theirs in zip(jax.tree.leaves(s_step), jax.tree.leaves(s_two)):
        np.testing.assert_array_equal(ours, theirs)
    mixed = {"w": params["w"], "b": jnp.zeros((8,), jnp.bfloat16)}
    mixed_grads = {"w": grads["w"], "b": jnp.ones((8,), jnp.bfloat16)}
    p_mixed, _ = step(mixed_grads, optimizer.init(mixed), mixed)
    assert p_mixed["b"].dtype == jnp.bfloat16
    np.testing.assert_allclose(p_mixed["w"], p_step["w"], rtol=0, atol=1e-6)
