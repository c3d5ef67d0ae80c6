"""Hypothesis profiles and shared strategies for the property tests.

Profiles (choose with `--hypothesis-profile=NAME`; `ci` is the default):
    ci        derandomized (the same examples on every run), 25 examples per property
    thorough  500 random examples per property, for a long local run

Strategies: `gpt_configs()` (tiny GPT configs: vocab 2..7, 1..3 heads of size 1..3,
1..2 layers, block size 1..9), `tokens_for(config)` (a (B, T) token array valid
for it), `seeds`. Parameters for a config come from `reference.gpt.random_params`
(far from the GPT-2 init, so every property is tested on a model that uses its inputs).
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from chainrule.reference import gpt as ref_gpt

settings.register_profile(
    "ci", derandomize=True, max_examples=25, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    # `--hypothesis-profile=NAME` wins over the default loaded above
    profile = config.getoption("hypothesis_profile", None)
    if profile:
        settings.load_profile(profile)


seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def gpt_configs(draw, vocab_size=None, min_block_size=1, options=False):
    """A tiny GPT config: vocab 2..7, n_head 1..3, head_dim 1..3, n_layer 1..2, block 1..9; with
    options=True, GPT2Config's options drawn too (activation, n_inner None or 1..9, the attention
    scale flags, a tied or untied head), else GPT-2's defaults."""
    n_head = draw(st.integers(1, 3))
    head_dim = draw(st.integers(1, 3))
    vocab = vocab_size if vocab_size is not None else draw(st.integers(2, 7))
    extra = {}
    if options:
        extra = dict(
            activation=draw(st.sampled_from(list(ref_gpt.ACTIVATIONS))),
            n_inner=draw(st.one_of(st.none(), st.integers(1, 9))),
            scale_attn=draw(st.booleans()),
            scale_attn_by_inverse_layer_idx=draw(st.booleans()),
            tie_word_embeddings=draw(st.booleans()),
        )
    return ref_gpt.Config(
        vocab_size=vocab,
        block_size=draw(st.integers(min_block_size, 9)),
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        n_embd=n_head * head_dim,
        bos_token=draw(st.integers(0, vocab - 1)),
        **extra,
    )


@st.composite
def tokens_for(draw, config, min_len=1, max_batch=3):
    """A (B, T) int64 token array for `config`, 1 <= B <= max_batch, min_len <= T <= block_size."""
    B = draw(st.integers(1, max_batch))
    T = draw(st.integers(min(min_len, config.block_size), config.block_size))
    seed = draw(seeds)
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(B, T))


@st.composite
def gpt_models(draw, vocab_size=None, min_block_size=1, options=False):
    """(config, float64 params) for a tiny GPT with generic random weights (options: see gpt_configs)."""
    config = draw(gpt_configs(vocab_size=vocab_size, min_block_size=min_block_size, options=options))
    return config, ref_gpt.random_params(config, np.random.default_rng(draw(seeds)))
