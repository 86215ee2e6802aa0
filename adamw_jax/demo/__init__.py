"""``python -m adamw_jax demo`` (not imported by the library): ``char_transformer.py`` (a small
causal transformer over characters, in Flax NNX, and its corpus in ``data/``), ``run.py`` (train
it with adamw_jax and with optax side by side, print the table, draw the plot).
"""
