"""The README's code runs as printed and does what its comments say."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_and_converges():
    text = README.read_text()
    code = text.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README quick start", "exec"), {})
    assert float(printed.getvalue()) < 1e-3  # the comment says ~1e-4


def test_performance_snippets_train_like_the_plain_optimizer():
    """The one-pass step and the flat-parameter step of the Performance section, run as
    printed on a small model, follow the unfused adamw."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    import adamw_jax as aw

    text = README.read_text().split("## Performance", 1)[1]
    one_pass, flat = (block.split("```", 1)[0] for block in text.split("```python")[1:3])
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.zeros(3)}
    batch = jnp.arange(8.0).reshape(2, 4) / 8

    def loss_fn(p, x):
        return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    scope = dict(jax=jax, aw=aw, functools=functools, loss_fn=loss_fn, params=params,
                 batch=batch, decay_mask={"w": True, "b": False})
    exec(compile(one_pass, "README one-pass step", "exec"), scope)
    exec(compile(flat, "README flat step", "exec"), scope)
    plain = aw.adamw(3e-4, weight_decay=0.1)
    expected, plain_state = params, plain.init(params)
    fused_params = jax.tree_util.tree_map(jnp.copy, params)  # train_step donates them
    fused_state = scope["optimizer"].init(params)
    for _ in range(5):
        grads = jax.grad(loss_fn)(expected, batch)
        updates, plain_state = plain.update(grads, plain_state, expected)
        expected = aw.apply_updates(expected, updates)
        fused_params, fused_state = scope["train_step"](fused_params, fused_state, batch)
    for key in params:  # 5 steps of |u| ~ 3e-4: float32 rounding of |θ| ≤ 1
        np.testing.assert_allclose(fused_params[key], expected[key], rtol=0, atol=1e-6)
    tree_optimizer = aw.adamw(1e-3, mask=scope["decay_mask"])
    updates, _ = tree_optimizer.update(jax.grad(loss_fn)(params, batch),
                                       tree_optimizer.init(params), params)
    flat_params = aw.flat.unflatten(scope["layout"], scope["buffers"])
    for key, value in aw.apply_updates(params, updates).items():
        np.testing.assert_allclose(flat_params[key], value, rtol=0, atol=1e-6)
