"""Write the demo corpus, ``adamw_jax/demo/data/fables.txt``: short fables generated from a small
hand-written grammar (self-written text, no download, no third-party rights).

The text is deterministic (fixed seed), about 300 KB of plain ASCII: long enough that a small
character-level transformer does not memorise it in a demo's few hundred steps, regular enough
(recurring words, names, sentence shapes) that its loss falls visibly within them.

    python examples/data/make_corpus.py   # rewrites the file; the output is byte-identical
"""

from __future__ import annotations

import random
from pathlib import Path

TARGET_BYTES = 300_000
OUTPUT = Path(__file__).resolve().parents[2] / "adamw_jax" / "demo" / "data" / "fables.txt"

ANIMALS = [
    "fox",
    "crow",
    "tortoise",
    "hare",
    "lion",
    "mouse",
    "wolf",
    "lamb",
    "owl",
    "heron",
    "badger",
    "otter",
    "goat",
    "ant",
    "grasshopper",
    "stag",
    "frog",
    "bee",
    "raven",
    "sparrow",
    "bear",
    "beaver",
    "cat",
    "dog",
    "horse",
    "donkey",
    "rooster",
    "swan",
]
ADJECTIVES = [
    "clever",
    "proud",
    "patient",
    "hungry",
    "old",
    "young",
    "careless",
    "honest",
    "greedy",
    "humble",
    "swift",
    "quiet",
    "boastful",
    "kind",
    "timid",
    "wise",
    "stubborn",
    "cheerful",
    "lazy",
    "curious",
]
PLACES = [
    "the edge of the forest",
    "a bend in the river",
    "the top of the hill",
    "a field of barley",
    "the old stone bridge",
    "a hollow oak",
    "the village well",
    "the frozen lake",
    "a garden of beans",
    "the mill by the stream",
    "a quiet meadow",
    "the foot of the mountain",
    "a patch of thistles",
    "the orchard wall",
]
SEASONS = [
    "in the spring",
    "one autumn morning",
    "on a hot summer day",
    "in the depth of winter",
    "at the first light of dawn",
    "late one evening",
    "after a long rain",
    "at harvest time",
]
THINGS = [
    "a piece of cheese",
    "a bunch of grapes",
    "a golden acorn",
    "a jar of honey",
    "a bright feather",
    "a loaf of bread",
    "a basket of plums",
    "a shining pebble",
    "a warm blanket",
    "a crust of pie",
    "a handful of seeds",
    "a silver bell",
]
WANTS = ["wanted", "longed for", "dreamed of", "asked for", "could not stop thinking about"]
ACTIONS = [
    "ran as fast as it could",
    "waited by the path",
    "climbed onto a rock",
    "hid behind the reeds",
    "worked from morning until night",
    "sang a little song",
    "counted its steps",
    "looked at its reflection in the water",
    "laughed at the others",
    "gathered what it could carry",
    "slept in the shade",
    "built a small shelter",
]
SAYINGS = [
    "Slow and steady wins the race",
    "Pride goes before a fall",
    "A friend in need is a friend indeed",
    "Look before you leap",
    "Do not count your chickens before they hatch",
    "Little by little does the trick",
    "It is easy to despise what you cannot get",
    "Kindness is never wasted",
    "Plan today for the needs of tomorrow",
    "Appearances are often deceptive",
    "Gratitude is the sign of noble souls",
    "Union gives strength",
    "The smallest help can be the greatest",
    "Honesty is the best policy",
]
OUTCOMES = [
    "and in the end it had nothing at all",
    "and so it kept what it had earned",
    "and the others learned to trust it",
    "and it never boasted again",
    "and from that day the two were friends",
    "and the winter found it ready",
    "and it went home wiser than it came",
    "and everyone in the meadow laughed",
]


def _with_article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _sentence_pool(rng: random.Random, hero: str, other: str) -> list[str]:
    thing = rng.choice(THINGS)
    return [
        f"The {hero} {rng.choice(WANTS)} {thing}.",
        f"{rng.choice(SEASONS).capitalize()}, the {hero} {rng.choice(ACTIONS)}.",
        f'"Why do you trouble yourself?" said the {other}. "There is plenty of time."',
        f"But the {hero} only {rng.choice(ACTIONS)}.",
        f"The {other} {rng.choice(ACTIONS)}, and then it {rng.choice(ACTIONS)}.",
        f'"I will give you {thing} if you help me," said the {hero} to the {other}.',
        f"When the {other} came back to {rng.choice(PLACES)}, the {hero} was gone.",
        f"Nobody at {rng.choice(PLACES)} had ever seen such a thing.",
        f"So the {hero} {rng.choice(ACTIONS)}, {rng.choice(OUTCOMES)}.",
    ]


def fable(rng: random.Random, number: int) -> str:
    """One fable: a title, a paragraph of five to nine sentences, and a moral."""
    hero, other = rng.sample(ANIMALS, 2)
    adjective = rng.choice(ADJECTIVES)
    opening = (
        f"{rng.choice(SEASONS).capitalize()} {_with_article(adjective)} {hero} lived at "
        f"{rng.choice(PLACES)}, close to {_with_article(rng.choice(ADJECTIVES))} {other}."
    )
    pool = _sentence_pool(rng, hero, other)
    body = [opening] + rng.sample(pool, rng.randint(4, 8))
    title = (
        f"{number}. The {adjective.capitalize()} {hero.capitalize()} and the {other.capitalize()}"
    )
    return f"{title}\n\n{' '.join(body)}\n\nMoral: {rng.choice(SAYINGS)}.\n\n"


def corpus(seed: int = 1668, target_bytes: int = TARGET_BYTES) -> str:
    """Fables numbered from 1 until the text reaches ``target_bytes``."""
    rng = random.Random(seed)
    parts, size, number = [], 0, 1
    while size < target_bytes:
        parts.append(fable(rng, number))
        size += len(parts[-1])
        number += 1
    return "".join(parts)


if __name__ == "__main__":
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(corpus(), encoding="ascii")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")
