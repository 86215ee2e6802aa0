"""adamw_jax.flax: Optimizer and TrainState against Flax's own classes with the same tx, over
50 jitted steps of a small model trained on a real loss: bit for bit on the two-call path,
to float32 rounding on the one-pass path, extra arguments forwarded, checkpoints and donation."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import adamw_jax.flax as awf
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx, serialization
from flax.training import train_state

import adamw_jax as aw
from adamw_jax.demo.char_transformer import decay_mask

STEPS = 50
LEARNING_RATE = 3e-2
INPUTS = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
TARGETS = np.random.default_rng(1).normal(size=(32, 3)).astype(np.float32)


class NnxRegressor(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.encoder = nnx.Linear(5, 16, rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jnp.tanh(self.norm(self.encoder(x))))


class LinenRegressor(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = linen.Dense(16, name="encoder")(x)
        return linen.Dense(3, name="head")(jnp.tanh(linen.LayerNorm(name="norm")(x)))


def mean_squared_error(predictions: jax.Array) -> jax.Array:
    return jnp.mean((predictions - TARGETS) ** 2)


def nnx_loss(model: NnxRegressor) -> jax.Array:
    return mean_squared_error(model(INPUTS))


TWO_CALL = {  # transformations that are not fused: update_and_apply calls update + apply_updates
    "aw.adamw": lambda: aw.adamw(LEARNING_RATE, weight_decay=0.1, mask=decay_mask),
    "optax.adamw": lambda: optax.adamw(LEARNING_RATE, weight_decay=0.1),
    "optax.chain": lambda: optax.chain(
        optax.clip_by_global_norm(0.5), aw.adamw(LEARNING_RATE, weight_decay=0.1, fused=True)
    ),
}


def fused() -> optax.GradientTransformation:
    return aw.adamw(LEARNING_RATE, weight_decay=0.1, mask=decay_mask, fused=True)


def unfused() -> optax.GradientTransformation:
    return TWO_CALL["aw.adamw"]()


def fused_tolerance(params: Any) -> float:
    """Allowed distance of the one-pass trajectory from the unfused one after ``STEPS`` steps.

    Each step's update differs by float32 rounding (bias corrections as scalar factors, FMA
    contraction): a few ulps of |u| <= η, well below ½ ulp of |θ| ~ 1, so it shows as a
    different rounding of θ, at most 1 ulp of max|θ| per step. Through the loss the model can
    feed such a difference back into later gradients, but Adam's normalized step bounds each
    step's effect by η. We allow 4·√N ulps of max|θ| (the random-walk growth of independent
    roundings, with the factor of helpers.float32_tolerance: 6.7e-6 here, against the 9e-7,
    4 ulps, we measure); a real mistake (eps misplaced,
    a step off by one, decay on a masked leaf) moves θ by more than 1e-4 within 50 steps.
    """
    largest = max(float(np.max(np.abs(x))) for x in jax.tree_util.tree_leaves(params))
    return 4.0 * np.sqrt(STEPS) * float(np.spacing(np.float32(max(largest, 1.0))))


def nnx_run(
    optimizer_class: type,
    tx: optax.GradientTransformation,
    steps: int = STEPS,
    *,
    with_value: bool = False,
    model: NnxRegressor | None = None,
    optimizer: Any = None,
) -> tuple[NnxRegressor, Any, list[float]]:
    """``steps`` steps of the loop from Flax's docs, ``nnx.jit`` with model and optimizer
    donated; ``with_value`` passes ``value=loss`` to ``update``."""
    model = model if model is not None else NnxRegressor(nnx.Rngs(0))
    optimizer = optimizer if optimizer is not None else optimizer_class(model, tx, wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(nnx_loss)(model)
        optimizer.update(model, grads, **({"value": loss} if with_value else {}))
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(steps)]
    return model, optimizer, losses


def pure_params(model: nnx.Module) -> dict:
    return jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def linen_run(
    state_class: type,
    tx: optax.GradientTransformation,
    steps: int = STEPS,
    *,
    apply: Callable | None = None,
) -> tuple[Any, list[float]]:
    """``steps`` steps of the loop from Flax's docs, ``jax.jit`` with the state donated;
    ``apply(state, grads, loss)`` replaces ``state.apply_gradients(grads=grads)``."""
    module = LinenRegressor()
    params = module.init(jax.random.key(0), INPUTS)["params"]
    state = state_class.create(apply_fn=module.apply, params=params, tx=tx)
    apply = apply or (lambda state, grads, loss: state.apply_gradients(grads=grads))

    def train_step(state):
        loss, grads = jax.value_and_grad(
            lambda p: mean_squared_error(state.apply_fn({"params": p}, INPUTS))
        )(state.params)
        return apply(state, grads, loss), loss

    train_step = jax.jit(train_step, donate_argnums=0)
    losses = []
    for _ in range(steps):
        state, loss = train_step(state)
        losses.append(float(loss))
    return state, losses


def assert_trees_equal(actual: Any, expected: Any) -> None:
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    jax.tree_util.tree_map(np.testing.assert_array_equal, actual, expected)


def assert_trees_close(actual: Any, expected: Any, atol: float) -> None:
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=atol), actual, expected
    )


@pytest.fixture(params=["native", "xla"])
def kernel(request, monkeypatch) -> str:
    """The one-pass step both ways it runs on CPU: the native kernel and the XLA pass."""
    monkeypatch.setenv(aw.native.ENVIRONMENT_VARIABLE, "1" if request.param == "native" else "0")
    return request.param


# ---------------------------------------------------------------------------------------------
# adamw_jax.flax.Optimizer


@pytest.mark.parametrize("name", TWO_CALL)
def test_optimizer_gives_flax_trajectory_bit_for_bit_on_the_two_call_path(name):
    """Same XLA ops on the same inputs: the losses, params, state and step are Flax's exactly."""
    model, optimizer, losses = nnx_run(awf.Optimizer, TWO_CALL[name]())
    flax_model, flax_optimizer, flax_losses = nnx_run(nnx.Optimizer, TWO_CALL[name]())
    assert flax_losses[-1] < 0.5 * flax_losses[0]  # it learns
    np.testing.assert_array_equal(losses, flax_losses)
    assert_trees_equal(pure_params(model), pure_params(flax_model))
    assert_trees_equal(
        nnx.to_pure_dict(nnx.state(optimizer)), nnx.to_pure_dict(nnx.state(flax_optimizer))
    )
    assert int(optimizer.step[...]) == STEPS


def test_optimizer_one_pass_matches_flax_to_float32_rounding(kernel):
    """The fused tx through the drop-in (one pass) against Flax's class with the same fused tx
    (update + apply_updates) and with the unfused adamw: equal up to float32 rounding."""
    model, optimizer, losses = nnx_run(awf.Optimizer, fused())
    for reference_tx in (fused(), unfused()):
        flax_model, _, flax_losses = nnx_run(nnx.Optimizer, reference_tx)
        expected = pure_params(flax_model)
        assert_trees_close(pure_params(model), expected, fused_tolerance(expected))
        np.testing.assert_allclose(losses, flax_losses, rtol=1e-5)
    assert isinstance(optimizer.opt_state, aw.FusedAdamState)
    assert int(optimizer.step[...]) == STEPS


def test_optimizer_one_pass_runs_the_native_kernel(kernel):
    model = NnxRegressor(nnx.Rngs(0))
    optimizer = awf.Optimizer(model, fused(), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def train_step(state):
        model, optimizer = nnx.merge(graphdef, state)
        optimizer.update(model, nnx.grad(nnx_loss)(model))
        return nnx.state((model, optimizer))

    text = jax.jit(train_step).lower(state).as_text()
    assert (aw.native.TARGET_NAME in text) == (kernel == "native")


def test_optimizer_update_returns_the_applied_update():
    """Flax returns u; the drop-in returns θ_new − θ, which is u up to the rounding of θ + u."""
    grads = nnx.grad(nnx_loss)(NnxRegressor(nnx.Rngs(0)))
    returned = {}
    for cls in (nnx.Optimizer, awf.Optimizer):
        model = NnxRegressor(nnx.Rngs(0))
        before = pure_params(model)
        optimizer = cls(model, fused(), wrt=nnx.Param)
        returned[cls] = nnx.jit(lambda m, o, g: o.update(m, g))(model, optimizer, grads)
    applied = jax.tree_util.tree_map(lambda new, old: new - old, pure_params(model), before)
    assert_trees_equal(jax.device_get(nnx.to_pure_dict(returned[awf.Optimizer])), applied)
    # |θ| < 4: θ + u is rounded to at most ½ ulp(4) = 2.4e-7
    assert_trees_close(
        nnx.to_pure_dict(returned[awf.Optimizer]),
        nnx.to_pure_dict(returned[nnx.Optimizer]),
        atol=2.4e-7,
    )


def plateau_chain(adamw: Callable[..., optax.GradientTransformation], **adamw_kwargs):
    """adamw then reduce_on_plateau fed value=loss: a large rate makes the loss stall, so the
    scale really drops within 50 steps."""
    return optax.chain(
        adamw(0.3, weight_decay=0.1, **adamw_kwargs),
        optax.contrib.reduce_on_plateau(factor=0.5, patience=2, cooldown=0),
    )


def plateau_scale(opt_state: Any) -> float:
    return float(opt_state[1].scale)


def fused_adamw(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
    return aw.adamw(*args, **kwargs, fused=True)


@pytest.mark.parametrize(
    "adamw", [optax.adamw, aw.adamw, fused_adamw], ids=["optax", "adamw_jax", "adamw_jax fused"]
)
def test_optimizer_forwards_value_to_reduce_on_plateau_as_flax_does(adamw):
    model, optimizer, losses = nnx_run(awf.Optimizer, plateau_chain(adamw), with_value=True)
    flax_model, flax_optimizer, flax_losses = nnx_run(
        nnx.Optimizer, plateau_chain(adamw), with_value=True
    )
    assert plateau_scale(nnx.as_pure(flax_optimizer.opt_state)) < 0.5  # the plateau acted
    np.testing.assert_array_equal(losses, flax_losses)
    assert_trees_equal(pure_params(model), pure_params(flax_model))
    assert_trees_equal(
        nnx.to_pure_dict(nnx.state(optimizer)), nnx.to_pure_dict(nnx.state(flax_optimizer))
    )


@pytest.mark.parametrize("make_tx", [unfused, fused], ids=["unfused", "fused"])
def test_optimizer_checkpoint_round_trips(make_tx, tmp_path):
    """nnx.state(optimizer) saved as bytes after 20 steps and restored into a fresh model and
    optimizer: 30 more steps give the 50-step run exactly."""
    model, optimizer, _ = nnx_run(awf.Optimizer, make_tx(), steps=20)
    path = tmp_path / "checkpoint.msgpack"
    path.write_bytes(serialization.to_bytes(nnx.to_pure_dict(nnx.state((model, optimizer)))))

    fresh_model = NnxRegressor(nnx.Rngs(1))
    fresh_optimizer = awf.Optimizer(fresh_model, make_tx(), wrt=nnx.Param)
    state = nnx.state((fresh_model, fresh_optimizer))
    restored = serialization.from_bytes(nnx.to_pure_dict(state), path.read_bytes())
    nnx.replace_by_pure_dict(state, restored)
    nnx.update((fresh_model, fresh_optimizer), state)
    assert int(fresh_optimizer.step[...]) == 20

    nnx_run(
        awf.Optimizer, make_tx(), steps=STEPS - 20, model=fresh_model, optimizer=fresh_optimizer
    )
    straight, straight_optimizer, _ = nnx_run(awf.Optimizer, make_tx())
    assert_trees_equal(pure_params(fresh_model), pure_params(straight))
    assert_trees_equal(
        nnx.to_pure_dict(nnx.state(fresh_optimizer)),
        nnx.to_pure_dict(nnx.state(straight_optimizer)),
    )


LARGE = 1 << 16  # a leaf this large is its own group of the fused layout, kept in its shape


class Wide(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.w = nnx.Param(jax.random.normal(rngs.params(), (LARGE,)))
        self.b = nnx.Param(jnp.zeros((7,)))

    def __call__(self) -> jax.Array:
        return jnp.sum(jnp.sin(self.w)) + jnp.sum(self.b**2)


def buffer_of(x: jax.Array) -> int:
    return x.unsafe_buffer_pointer()


def test_optimizer_steps_in_place_under_nnx_jit_with_donation(kernel):
    """Donated through nnx.jit, the one-pass step writes θ and the moments into their own
    buffers: the old arrays are consumed and the new ones live at the same addresses."""
    model = Wide(nnx.Rngs(0))
    optimizer = awf.Optimizer(model, aw.adamw(1e-2, weight_decay=0.1, fused=True), wrt=nnx.Param)
    step = nnx.jit(
        lambda m, o: o.update(m, nnx.grad(lambda m: m())(m)) and None, donate_argnums=(0, 1)
    )
    step(model, optimizer)  # compile; the state now lives in XLA's output buffers
    old_w, old_mu = model.w.get_value(), optimizer.opt_state.mu[-1].get_value()
    addresses = buffer_of(old_w), buffer_of(old_mu)
    step(model, optimizer)
    assert old_w.is_deleted() and old_mu.is_deleted()
    assert (
        buffer_of(model.w.get_value()),
        buffer_of(optimizer.opt_state.mu[-1].get_value()),
    ) == addresses


def test_optimizer_steps_in_place_under_jax_jit_of_split_state(kernel):
    model = Wide(nnx.Rngs(0))
    optimizer = awf.Optimizer(model, aw.adamw(1e-2, weight_decay=0.1, fused=True), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def train_step(state):
        model, optimizer = nnx.merge(graphdef, state)
        optimizer.update(model, nnx.grad(lambda m: m())(model))
        return nnx.state((model, optimizer))

    train_step = jax.jit(train_step, donate_argnums=0)
    state = train_step(state)
    leaves = jax.tree_util.tree_leaves(state)
    addresses = [buffer_of(x) for x in leaves if x.size >= LARGE]
    assert len(addresses) == 3  # θ, μ and ν of the large leaf
    state = train_step(state)
    assert all(x.is_deleted() for x in leaves)
    assert [buffer_of(x) for x in jax.tree_util.tree_leaves(state) if x.size >= LARGE] == addresses


def test_optimizer_requires_flax_arguments():
    model = NnxRegressor(nnx.Rngs(0))
    with pytest.raises(TypeError, match="Missing required argument `wrt`"):
        awf.Optimizer(model, fused())
    optimizer = awf.Optimizer(model, fused(), wrt=nnx.Param)
    with pytest.raises(TypeError, match="grads"):
        optimizer.update(nnx.grad(nnx_loss)(model))  # Flax < 0.11's update(grads)
    with pytest.raises(AttributeError, match="ModelAndOptimizer"):
        optimizer.model  # noqa: B018


def test_optimizer_with_gradients_of_another_model_names_the_mismatch():
    model = NnxRegressor(nnx.Rngs(0))
    optimizer = awf.Optimizer(model, fused(), wrt=nnx.Param)
    other = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"missing \[\"\['encoder'\]\['bias'\]\""):
        optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(INPUTS)))(other))


# ---------------------------------------------------------------------------------------------
# adamw_jax.flax.TrainState


@pytest.mark.parametrize("name", TWO_CALL)
def test_train_state_gives_flax_trajectory_bit_for_bit_on_the_two_call_path(name):
    state, losses = linen_run(awf.TrainState, TWO_CALL[name]())
    flax_state, flax_losses = linen_run(train_state.TrainState, TWO_CALL[name]())
    assert flax_losses[-1] < 0.5 * flax_losses[0]
    np.testing.assert_array_equal(losses, flax_losses)
    assert_trees_equal(state.params, flax_state.params)
    assert_trees_equal(state.opt_state, flax_state.opt_state)
    assert int(state.step) == STEPS and type(state) is awf.TrainState


def test_train_state_one_pass_matches_flax_to_float32_rounding(kernel):
    state, losses = linen_run(awf.TrainState, fused())
    for reference_tx in (fused(), unfused()):
        flax_state, flax_losses = linen_run(train_state.TrainState, reference_tx)
        assert_trees_close(state.params, flax_state.params, fused_tolerance(flax_state.params))
        np.testing.assert_allclose(losses, flax_losses, rtol=1e-5)


@pytest.mark.parametrize("adamw", [optax.adamw, fused_adamw], ids=["optax", "adamw_jax fused"])
def test_train_state_forwards_extra_args_to_tx_update(adamw):
    """Flax's TrainState cannot pass value=loss; ``extra_args`` does, with the trajectory of
    tx.update(..., value=loss) + apply_updates, written out by hand."""

    def by_hand(state, grads, loss):
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=loss)
        return state.replace(
            step=state.step + 1,
            opt_state=opt_state,
            params=optax.apply_updates(state.params, updates),
        )

    state, losses = linen_run(
        awf.TrainState,
        plateau_chain(adamw),
        apply=lambda s, g, loss: s.apply_gradients(grads=g, extra_args={"value": loss}),
    )
    expected, expected_losses = linen_run(
        train_state.TrainState, plateau_chain(adamw), apply=by_hand
    )
    assert plateau_scale(expected.opt_state) < 0.5
    np.testing.assert_array_equal(losses, expected_losses)
    assert_trees_equal(state.params, expected.params)
    assert_trees_equal(state.opt_state, expected.opt_state)


def test_train_state_checkpoint_round_trips(tmp_path):
    state, _ = linen_run(awf.TrainState, fused(), steps=1)
    path = tmp_path / "state.msgpack"
    path.write_bytes(serialization.to_bytes(state))
    template = awf.TrainState.create(
        apply_fn=state.apply_fn,
        params=jax.tree_util.tree_map(jnp.zeros_like, state.params),
        tx=fused(),
    )
    restored = serialization.from_bytes(template, path.read_bytes())
    assert_trees_equal(jax.device_get(restored.params), jax.device_get(state.params))
    assert_trees_equal(jax.device_get(restored.opt_state), jax.device_get(state.opt_state))
    assert int(restored.step) == 1 and type(restored) is awf.TrainState


def test_train_state_steps_in_place_under_jax_jit_with_donation(kernel):
    params = {"w": jax.random.normal(jax.random.key(0), (LARGE,)), "b": jnp.zeros((7,))}
    state = awf.TrainState.create(
        apply_fn=None, params=params, tx=aw.adamw(1e-2, weight_decay=0.1, fused=True)
    )
    step = jax.jit(
        lambda s: s.apply_gradients(
            grads=jax.grad(lambda p: jnp.sum(jnp.sin(p["w"])) + jnp.sum(p["b"] ** 2))(s.params)
        ),
        donate_argnums=0,
    )
    state = step(state)
    old_w, old_mu = state.params["w"], state.opt_state.mu[-1]
    addresses = buffer_of(old_w), buffer_of(old_mu)
    state = step(state)
    assert old_w.is_deleted() and old_mu.is_deleted()
    assert (buffer_of(state.params["w"]), buffer_of(state.opt_state.mu[-1])) == addresses


def test_train_state_keeps_flax_overwrite_with_gradient_collection():
    """fp8's OVERWRITE_WITH_GRADIENT: only grads['params'] go through tx, the other collection
    replaces its parameters, as in Flax."""
    from flax.linen.fp8_ops import OVERWRITE_WITH_GRADIENT

    params = {"params": {"w": jnp.ones((3,))}, OVERWRITE_WITH_GRADIENT: {"scale": jnp.ones(())}}
    grads = {
        "params": {"w": jnp.full((3,), 0.5)},
        OVERWRITE_WITH_GRADIENT: {"scale": jnp.full((), 7.0)},
    }
    for tx in (fused(), optax.adamw(1e-2)):
        ours, theirs = (
            cls.create(apply_fn=None, params=params, tx=tx).apply_gradients(grads=grads)
            for cls in (awf.TrainState, train_state.TrainState)
        )
        assert_trees_close(ours.params, theirs.params, atol=1e-7)  # one step, |θ| = 1
        assert float(ours.params[OVERWRITE_WITH_GRADIENT]["scale"]) == 7.0


def test_train_state_replaces_fields_and_names_extra_args_for_others():
    state = awf.TrainState.create(apply_fn=None, params={"w": jnp.ones(3)}, tx=fused())
    grads = {"w": jnp.ones(3)}
    assert state.apply_gradients(grads=grads, apply_fn=len).apply_fn is len  # Flax's **kwargs
    with pytest.raises(TypeError, match="extra_args"):
        state.apply_gradients(grads=grads, value=1.0)
    with pytest.raises(TypeError, match="extra_args"):
        state.apply_gradients(grads=grads, extra_args=[("value", 1.0)])


def test_import_adamw_jax_does_not_import_flax():
    """Flax is imported by ``import adamw_jax.flax`` only (a fresh interpreter: this session has
    imported Flax already)."""
    code = "import sys, adamw_jax; assert 'flax' not in sys.modules, 'flax imported'"
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
    )
