"""exclude_from_weight_decay: names, regex semantics, Keras' own exclusion, and adamw(mask=...)
against the float64 reference."""

from __future__ import annotations

import re
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from hypothesis import given
from hypothesis import strategies as st
from keras_runner import keras_trajectory
from reference import adamw_trajectory

import adamw_jax as aw


class Norm(NamedTuple):
    scale: jax.Array
    offset: jax.Array


def test_names_are_slash_joined_key_paths():
    params = {"layers": [{"kernel": 1.0, "bias": 2.0}, Norm(3.0, 4.0)], "embed": 5.0}
    assert aw.masks.parameter_names(params) == {
        "layers": [
            {"kernel": "layers/0/kernel", "bias": "layers/0/bias"},
            Norm("layers/1/scale", "layers/1/offset"),
        ],
        "embed": "embed",
    }


def test_patterns_exclude_matching_names_anywhere():
    params = {
        "encoder": {"dense": {"kernel": 1.0, "bias": 1.0}, "layer_norm": {"scale": 1.0}},
        "embed": 1.0,
        "unembed": 1.0,
    }
    mask = jax.jit(
        lambda p: jax.tree_util.tree_map(
            jnp.asarray, aw.exclude_from_weight_decay(["bias", "norm", r"^embed$"])(p)
        )
    )(params)
    assert jax.tree_util.tree_map(bool, mask) == {
        "encoder": {"dense": {"kernel": True, "bias": False}, "layer_norm": {"scale": False}},
        "embed": False,
        "unembed": True,
    }
    assert aw.exclude_from_weight_decay([])(params)["embed"] is True


names = st.lists(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), min_size=1, max_size=6, unique=True)


@given(keys=names, patterns=st.lists(st.from_regex(r"[a-z_]{1,3}", fullmatch=True), max_size=3))
def test_mask_is_no_pattern_searches_the_name(keys, patterns):
    params = {"block": {k: 0.0 for k in keys}}
    with warnings.catch_warnings():  # random patterns often match nothing; tested below
        warnings.simplefilter("ignore", UserWarning)
        mask = aw.exclude_from_weight_decay(patterns)(params)
    for k in keys:
        assert mask["block"][k] == (not any(re.search(p, f"block/{k}") for p in patterns))


def test_same_variables_decay_as_keras_exclude_from_weight_decay():
    """With zero gradients AdamW moves only by decay, so the variables that moved are the
    ones Keras decays; its patterns match the variable name, the last part of ours."""
    import keras  # after keras_runner, which selects the JAX backend

    params = {"kernel": np.ones(3), "bias": np.ones(3), "gamma_norm": np.ones(2)}
    keras_opt = keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5)
    keras_opt.exclude_from_weight_decay(var_names=["bias", "norm"])
    zero = {k: np.zeros_like(v) for k, v in params.items()}
    keras_moved = {
        k: not np.allclose(v, 1.0)
        for k, v in keras_trajectory(keras_opt, params, [zero])[0].items()
    }
    optimizer = aw.adamw(0.1, weight_decay=0.5, mask=aw.exclude_from_weight_decay(["bias", "norm"]))
    ours = trajectory(optimizer, params, [zero])[0]
    assert {k: not np.allclose(v, 1.0) for k, v in ours.items()} == keras_moved
    assert keras_moved == {"kernel": True, "bias": False, "gamma_norm": False}


def test_adamw_with_the_mask_matches_reference():
    params = make_params(0, {"kernel": (4, 3), "bias": (3,), "norm_scale": (3,)})
    grads = gradient_stream(params, 50, seed=5)
    optimizer = aw.adamw(
        1e-2, weight_decay=0.3, mask=aw.exclude_from_weight_decay(["bias", "norm"])
    )
    expected = adamw_trajectory(
        params,
        grads,
        learning_rate=1e-2,
        weight_decay=0.3,
        decay_mask={"kernel": True, "bias": False, "norm_scale": False},
    )
    assert max_abs_error(trajectory(optimizer, params, grads), expected) <= float32_tolerance(
        expected
    )


def test_bad_patterns_are_rejected():
    with pytest.raises(TypeError, match=r"wrap a single pattern in a list, e.g. \['bias'\]"):
        aw.exclude_from_weight_decay("bias")
    with pytest.raises(TypeError, match="each pattern must be a str, got int 3"):
        aw.exclude_from_weight_decay(["bias", 3])
    with pytest.raises(ValueError, match=r"pattern '\(bias' is not a valid regular expression"):
        aw.exclude_from_weight_decay(["(bias"])


def test_patterns_that_match_no_parameter_are_named_once():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    optimizer = aw.adamw(1e-2, mask=aw.exclude_from_weight_decay(["bias", "layer_norm", "^emb"]))
    with pytest.warns(UserWarning, match=r"\['layer_norm', '\^emb'\] match no parameter") as caught:
        state = optimizer.init(params)
        jax.jit(optimizer.update)(params, state, params)
    assert len([w for w in caught if "match no parameter" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        aw.exclude_from_weight_decay(["bias", "kernel"])(params)
