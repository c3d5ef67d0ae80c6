"""reference.generation: GenerationConfig (HF names, defaults, from_dict), the processors it implies
in HF's order, `plan`, and the decoding loop's stopping rules on a scripted model."""

from __future__ import annotations

import numpy as np
import pytest

from chainrule.reference import generation, sampling
from chainrule.reference.generation import GenerationConfig


def test_defaults_are_hfs_effective_defaults():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GenerationConfig._get_default_generation_params()
    c = GenerationConfig()
    for name in ("max_length", "do_sample", "num_beams", "temperature", "top_k", "top_p", "typical_p",
                 "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "num_return_sequences",
                 "epsilon_cutoff", "eta_cutoff", "early_stopping", "min_length"):  # fmt: skip
        assert getattr(c, name) == hf[name], name


def test_from_dict_reads_hf_dicts_and_refuses_by_name():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GenerationConfig(max_new_tokens=7, eos_token_id=[3, 4], pad_token_id=0, do_sample=True,
                                       top_k=5, repetition_penalty=1.2, bad_words_ids=[[1, 2]], num_beams=1)
    c = GenerationConfig.from_dict(hf.to_dict())
    assert (c.max_new_tokens, c.eos_token_id, c.top_k, c.bad_words_ids) == (7, (3, 4), 5, ((1, 2),))
    assert GenerationConfig.from_dict(transformers.GenerationConfig().to_dict()) == GenerationConfig()
    with pytest.raises(ValueError, match=r"^generation_config\['num_beam_groups'\]: not supported"):
        GenerationConfig.from_dict({"num_beam_groups": 2})
    with pytest.raises(ValueError, match=r"^generation_config\['top_q'\]: unknown setting"):
        GenerationConfig.from_dict({"top_q": 0.5})
    assert GenerationConfig.from_dict({"num_beam_groups": 1, "output_scores": True}) == GenerationConfig()


@pytest.mark.parametrize("field,value", [
    ("max_new_tokens", -1), ("top_k", 1.5), ("top_p", 1.5), ("temperature", -1.0), ("repetition_penalty", 0),
    ("early_stopping", "sometimes"), ("eos_token_id", [1, -2]), ("bad_words_ids", [["a"]]),
    ("exponential_decay_length_penalty", (2, 0.0)), ("do_sample", 1), ("num_return_sequences", 2),
])  # fmt: skip
def test_bad_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"^generation_config.{field}"):
        GenerationConfig(**{field: value})


def test_processors_in_hfs_order_warpers_only_when_sampling():
    c = GenerationConfig(repetition_penalty=1.2, no_repeat_ngram_size=2, eos_token_id=3, min_new_tokens=2,
                         suppress_tokens=[5], temperature=0.7, top_k=4, top_p=0.9, do_sample=True)
    pre, warp = generation.logits_processors(c, prompt_length=4, max_length=10)
    assert [p.name for p in pre] == ["repetition_penalty", "no_repeat_ngram", "min_new_tokens", "suppress_tokens"]
    assert [p.name for p in warp] == ["temperature", "top_k", "top_p"]
    greedy = GenerationConfig(temperature=0.7, top_k=4)
    assert generation.logits_processors(greedy, 4, 10) == ([], [])
    assert all(name in sampling.ORDER for name in ("min_new_tokens", "suppress_tokens"))


def test_plan_resolves_lengths_and_randomness():
    assert generation.plan(GenerationConfig(), 5, 11).max_new_tokens == 15  # HF: max_length 20 counts the prompt
    assert generation.plan(GenerationConfig(max_new_tokens=3), 5, 11, max_new_tokens=6).max_new_tokens == 6
    with pytest.raises(ValueError, match="^max_new_tokens"):
        generation.plan(None, 5, 11)
    with pytest.raises(ValueError, match="^u: do_sample=True needs"):
        generation.plan(GenerationConfig(do_sample=True), 5, 11)
    with pytest.raises(ValueError, match="^u: greedy"):
        generation.plan(GenerationConfig(), 5, 11, u=np.zeros((1, 15)))
    with pytest.raises(ValueError, match="^eos_token_id"):
        generation.plan(GenerationConfig(eos_token_id=11), 5, 11)
    with pytest.raises(ValueError, match="^stop_sequences"):
        generation.plan(GenerationConfig(stop_sequences=[[]], pad_token_id=0), 5, 11)
    with pytest.raises(ValueError, match="^generation_config: expected a GenerationConfig"):
        generation.plan({"max_new_tokens": 3}, 5, 11)
    assert generation.plan(GenerationConfig(eos_token_id=[4, 2]), 5, 11).pad_token_id == 4  # the first eos


def _scripted(script):
    """A model whose row b emits script[b][n] at step n (logits one-hot), as decode's step."""
    V = 10

    def logits_at(n):
        x = np.full((len(script), V), -5.0)
        for b, row in enumerate(script):
            x[b, row[min(n, len(row) - 1)]] = 5.0
        return x

    def step(cache, tokens):
        return logits_at(cache + 1), cache + 1

    return logits_at(0), 0, step


def test_decode_stops_rows_at_eos_and_stop_sequences_then_all():
    logits, cache, step = _scripted([[1, 2, 3, 9, 1, 1], [4, 4, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    prompt = np.array([[7], [7], [4]])
    new = generation.decode(logits, cache, step, prompt, 6, eos_token_id=(9,), pad_token_id=0,
                            stop_sequences=((4, 4), (4, 1)))  # fmt: skip
    # row 0 ends at its eos (step 3); row 1 at the stop sequence 4 4 (step 1); row 2 at 4 1 across
    # the prompt (step 0): the loop stops after step 3, the longest row
    assert new.tolist() == [[1, 2, 3, 9], [4, 4, 0, 0], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match="^pad_token_id"):
        generation.decode(logits, cache, step, prompt, 6, eos_token_id=(9,))
    assert generation.decode(logits, cache, step, prompt, 0).shape == (3, 0)
