"""The demo's model and data: a small causal transformer over characters, in Flax NNX.

Pre-norm blocks ``x ← x + Attention(LN(x))``, ``x ← x + MLP(LN(x))`` over learned token and
position embeddings; the loss is the mean next-character cross-entropy (nats per character).
Everything here is plain library code so that ``python -m adamw_jax demo`` works from an
installed wheel, which has no ``examples/`` folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from adamw_jax.transforms.masks import exclude_from_weight_decay

NO_DECAY_NAMES = ("bias", "scale")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the character transformer."""

    vocab_size: int
    context: int = 64
    width: int = 64
    heads: int = 4
    layers: int = 2


class Block(nnx.Module):
    """One pre-norm transformer block: causal self-attention, then a 4x-wide GELU MLP."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs) -> None:
        self.attention_norm = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            heads, width, decode=False, keep_rngs=False, rngs=rngs
        )
        self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
        self.mlp_in = nnx.Linear(width, 4 * width, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x), mask=mask)
        return x + self.mlp_out(nnx.gelu(self.mlp_in(self.mlp_norm(x))))


class CharTransformer(nnx.Module):
    """Logits of the next character at every position of a ``(batch, length)`` token array."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
        self.token_embedding = nnx.Embed(config.vocab_size, config.width, rngs=rngs)
        self.position_embedding = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (config.context, config.width))
        )
        self.blocks = nnx.List(
            [Block(config.width, config.heads, rngs=rngs) for _ in range(config.layers)]
        )
        self.final_norm = nnx.LayerNorm(config.width, rngs=rngs)
        self.head = nnx.Linear(config.width, config.vocab_size, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        length = tokens.shape[-1]
        x = self.token_embedding(tokens) + self.position_embedding[:length]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.final_norm(x))


#: ``True`` on the leaves to decay: every parameter but biases and norm scales. Works on any
#: pytree whose paths carry the Flax names (an ``nnx.State`` or a Linen params dict).
decay_mask = exclude_from_weight_decay([rf"(^|/)({'|'.join(NO_DECAY_NAMES)})(/|$)"])


def next_character_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy of the next character, in nats."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


class Vocabulary:
    """The characters of a text, each mapped to its rank in sorted order."""

    def __init__(self, text: str) -> None:
        self.characters = sorted(set(text))
        self._index = {c: i for i, c in enumerate(self.characters)}

    def __len__(self) -> int:
        return len(self.characters)

    def encode(self, text: str) -> np.ndarray:
        return np.fromiter((self._index[c] for c in text), np.int32, len(text))

    def decode(self, tokens: Any) -> str:
        return "".join(self.characters[int(t)] for t in tokens)


def load_fables() -> str:
    """The shipped demo corpus: ~300 KB of self-written fables (``adamw_jax/demo/data``)."""
    return (resources.files("adamw_jax.demo") / "data" / "fables.txt").read_text(encoding="ascii")


def random_windows(
    tokens: np.ndarray, batch_size: int, context: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless ``(inputs, targets)`` batches of windows at uniform random offsets.

    ``targets`` is ``inputs`` shifted by one character. The same seed gives the same batches,
    so two optimizers can be compared on identical data.
    """
    rng = np.random.default_rng(seed)
    offsets = np.arange(context + 1)
    while True:
        starts = rng.integers(0, len(tokens) - context - 1, size=batch_size)
        windows = tokens[starts[:, None] + offsets]
        yield windows[:, :-1], windows[:, 1:]


def sample_text(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    vocabulary: Vocabulary,
    prompt: str,
    *,
    length: int,
    context: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` by ``length`` characters, sampling at ``temperature``."""

    @jax.jit
    def next_token(window: jax.Array, position: jax.Array, key: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, params)(window[None])[0, position]
        return jax.random.categorical(key, logits / temperature)

    tokens = list(vocabulary.encode(prompt))
    key = jax.random.key(seed)
    for _ in range(length):
        visible = tokens[-context:]
        # Right-padding is harmless: the causal mask hides it from the read position.
        window = np.zeros(context, np.int32)
        window[: len(visible)] = visible
        key, subkey = jax.random.split(key)
        tokens.append(int(next_token(window, len(visible) - 1, subkey)))
    return vocabulary.decode(tokens)
