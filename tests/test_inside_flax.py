"""adamw_jax inside Flax: nnx.Optimizer and Linen TrainState give the plain optax loop's
trajectory, decay masks come from Flax parameter paths, per-module learning rates from labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen, nnx
from flax.training import train_state
from helpers import float32_tolerance, gradient_stream, max_abs_error
from hypothesis import given
from hypothesis import strategies as st
from reference import adamw_trajectory

import adamw_jax as aw
from adamw_jax.demo.char_transformer import decay_mask

STEPS = 25
INPUTS = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
TARGETS = np.random.default_rng(1).normal(size=(16, 3)).astype(np.float32)


class NnxRegressor(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.encoder = nnx.Linear(5, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jnp.tanh(self.norm(self.encoder(x))))


class LinenRegressor(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = linen.Dense(8, name="encoder")(x)
        return linen.Dense(3, name="head")(jnp.tanh(linen.LayerNorm(name="norm")(x)))


def optimizer() -> optax.GradientTransformation:
    return aw.adamw(3e-2, weight_decay=0.1, mask=decay_mask)


def mean_squared_error(predictions: jax.Array) -> jax.Array:
    return jnp.mean((predictions - TARGETS) ** 2)


def plain_optax_loop(apply, params):
    """The loop every optax user writes: value_and_grad, update, apply_updates, all jitted."""
    tx = optimizer()

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: mean_squared_error(apply(p, INPUTS)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for _ in range(STEPS):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return params, losses


def test_nnx_optimizer_gives_the_plain_optax_trajectory():
    model = NnxRegressor(nnx.Rngs(0))
    graphdef, initial = nnx.split(model, nnx.Param)
    expected_params, expected_losses = plain_optax_loop(
        lambda p, x: nnx.merge(graphdef, p)(x), initial
    )

    trainer = nnx.Optimizer(model, optimizer(), wrt=nnx.Param)

    @nnx.jit
    def step(model, trainer):
        loss, grads = nnx.value_and_grad(lambda m: mean_squared_error(m(INPUTS)))(model)
        trainer.update(model, grads)
        return loss

    losses = [float(step(model, trainer)) for _ in range(STEPS)]
    assert losses[-1] < 0.5 * losses[0]  # it learns
    # Same XLA ops on the same inputs on one CPU device: nothing but the wrapper differs.
    np.testing.assert_array_equal(losses, expected_losses)
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, nnx.state(model, nnx.Param), expected_params
    )


def test_split_nnx_params_take_the_one_pass_step(monkeypatch):
    """The README's recipe: nnx.split the parameters, step them with update_and_apply on a
    fused adamw (the native kernel here), nnx.merge inside the loss; same trajectory as the
    plain loop to float32 rounding."""
    monkeypatch.setenv(aw.native.ENVIRONMENT_VARIABLE, "1")
    graphdef, params = nnx.split(NnxRegressor(nnx.Rngs(0)), nnx.Param)
    expected_params, _ = plain_optax_loop(lambda p, x: nnx.merge(graphdef, p)(x), params)
    tx = aw.adamw(3e-2, weight_decay=0.1, mask=decay_mask, fused=True)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state):
        loss = lambda p: mean_squared_error(nnx.merge(graphdef, p)(INPUTS))  # noqa: E731
        return aw.update_and_apply(tx, jax.grad(loss)(params), opt_state, params)

    assert aw.native.TARGET_NAME in train_step.lower(params, opt_state).as_text()
    for _ in range(STEPS):
        params, opt_state = train_step(params, opt_state)
    # 25 steps of |u| <= 3e-2 on |θ| ~ 1: a few float32 ulps each
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-5), params, expected_params
    )


def test_linen_train_state_gives_the_plain_optax_trajectory():
    module = LinenRegressor()
    params = module.init(jax.random.key(0), INPUTS)["params"]
    expected_params, expected_losses = plain_optax_loop(
        lambda p, x: module.apply({"params": p}, x), params
    )

    @jax.jit
    def step(state):
        def loss_of(p):
            return mean_squared_error(state.apply_fn({"params": p}, INPUTS))

        loss, grads = jax.value_and_grad(loss_of)(state.params)
        return state.apply_gradients(grads=grads), loss

    state = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=optimizer())
    losses = []
    for _ in range(STEPS):
        state, loss = step(state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    np.testing.assert_array_equal(losses, expected_losses)
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, expected_params)
    assert int(state.step) == STEPS


def test_decay_mask_from_flax_paths_spares_biases_and_norm_scales():
    """With a zero gradient only decay acts: kernels shrink by 1 - η·λ, the rest stay put."""
    model = NnxRegressor(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert nnx.to_pure_dict(decay_mask(params)) == {
        "encoder": {"kernel": True, "bias": False},
        "norm": {"scale": False, "bias": False},
        "head": {"kernel": True, "bias": False},
    }
    before = nnx.to_pure_dict(params)  # a copy: the State's variables are updated in place
    trainer = nnx.Optimizer(model, aw.adamw(0.5, weight_decay=0.1, mask=decay_mask), wrt=nnx.Param)
    nnx.jit(lambda m, t, g: t.update(m, g))(
        model, trainer, jax.tree_util.tree_map(jnp.zeros_like, params)
    )
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for module, name in [("encoder", "kernel"), ("head", "kernel")]:
        np.testing.assert_allclose(
            after[module][name], before[module][name] * (1 - 0.5 * 0.1), rtol=1e-7
        )
    for module, name in [
        ("encoder", "bias"),
        ("norm", "scale"),
        ("norm", "bias"),
        ("head", "bias"),
    ]:
        np.testing.assert_array_equal(after[module][name], before[module][name])


NAMES = st.sampled_from(["kernel", "bias", "scale", "embedding"])
MODULES = st.sampled_from(["Dense_0", "attention", "LayerNorm_1", "mlp", "bias_net"])
LINEN_PARAMS = st.recursive(
    st.dictionaries(NAMES, st.just(0.0), min_size=1),
    lambda children: st.dictionaries(MODULES, children, min_size=1),
    max_leaves=12,
)


@given(LINEN_PARAMS)
def test_decay_mask_follows_the_last_parameter_name_at_any_depth(params):
    """Only the leaf's own name counts: a module called ``bias_net`` is still decayed."""
    mask = decay_mask(params)
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        flag = mask
        for key in path:
            flag = flag[key.key]
        assert flag is (path[-1].key not in ("bias", "scale"))


def test_per_module_learning_rates_follow_the_reference():
    """optax.multi_transform over labels from Flax paths: the encoder trains at 1e-2, the rest
    at 1e-3; each leaf's trajectory is the float64 reference's at its module's rate."""
    model = NnxRegressor(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    rates = {"encoder": 1e-2, "rest": 1e-3}

    def labels(tree):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "encoder" if path[0].key == "encoder" else "rest", tree
        )

    tx = optax.multi_transform(
        {label: aw.adamw(rate, weight_decay=0.1, mask=decay_mask) for label, rate in rates.items()},
        labels,
    )
    trainer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [jax.tree_util.keystr(path) for path, _ in flat]
    start = {name: np.asarray(leaf, np.float64) for name, (_, leaf) in zip(names, flat)}
    grads = gradient_stream(start, STEPS, seed=3)
    update = nnx.jit(lambda m, t, g: t.update(m, g))
    actual = []
    for grad in grads:
        update(
            model,
            trainer,
            jax.tree_util.tree_unflatten(
                treedef, [jnp.asarray(grad[name], jnp.float32) for name in names]
            ),
        )
        leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
        actual.append({name: np.asarray(leaf, np.float64) for name, leaf in zip(names, leaves)})

    masks = dict(zip(names, jax.tree_util.tree_leaves(decay_mask(params))))
    for label, rate in rates.items():
        chosen = [
            name for name in names if (name.startswith("['encoder']")) == (label == "encoder")
        ]
        expected = adamw_trajectory(
            {n: start[n] for n in chosen},
            [{n: g[n] for n in chosen} for g in grads],
            learning_rate=rate,
            weight_decay=0.1,
            decay_mask={n: masks[n] for n in chosen},
        )
        observed = [{n: step[n] for n in chosen} for step in actual]
        assert max_abs_error(observed, expected) <= float32_tolerance(expected)
