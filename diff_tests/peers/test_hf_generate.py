"""reference.gpt.generate and fast.gpt.generate against HF transformers' `model.generate`,
token for token, with the same generation settings.

A random tiny GPT2LMHeadModel in float64 with perturbed weights (as in test_hf_beam.py; wte
halved), loaded with `from_hf_gpt2`. Each case is one HF `transformers.GenerationConfig(...)`; chainrule
runs the same settings as a `GenerationConfig`, built from HF's `to_dict()` by
`GenerationConfig.from_dict` (most cases: that tests from_dict too) or from the same keyword
arguments. Covered: greedy and beam search with eos (one id and several), min_new_tokens,
no_repeat_ngram_size, repetition_penalty, bad_words_ids (one-token and multi-token words),
suppress_tokens and begin_suppress_tokens, forced_bos_token_id and forced_eos_token_id,
batched left-padded prompts of different lengths (HF given the attention_mask), beam search
with num_return_sequences, and sampling with top_k / top_p / temperature.

Sampling. HF draws with `torch.multinomial(probs, num_samples=1)` in `_sample`, probs (B, V)
the softmax of the processed scores, once per step. The test replaces it (monkeypatch) by the
inverse-CDF draw chainrule makes from the uniforms it is given as `u`: at step n, row b, the
smallest i with cumsum(probs[b])_i > u[b, n]. HF and chainrule then draw from the same
uniforms, and the tokens must agree. (HF's probabilities are float32, chainrule's float64: a
u within ~1e-7 of a cumulative boundary could legitimately flip; the fixed seeds here have none.)

Every case proves it tests something: HF's own output changes when the setting under test is
removed (or, for padded batches, chainrule's output changes when the mask is withheld; for
sampling, HF's output changes with other uniforms). Each comparison prints its count of
agreeing rows (visible with -s).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="HF transformers is not installed (peers extra)")

from diff_tests.peers.hf_weights import perturb_gpt2  # noqa: E402
from diff_tests.peers.test_hf_gpt2 import _hf_config, _state  # noqa: E402
from chainrule.fast import gpt as fast_gpt  # noqa: E402
from chainrule.reference import gpt as ref_gpt  # noqa: E402
from chainrule.reference.generation import GenerationConfig  # noqa: E402

V, EOS, EOS2, PAD = 16, 5, 9, 15
EARLY, MIN_NEW, MIN_NEW_BEAM = "never", 3, 7
BAD1 = [[6], [3, 3, 3], [4, 0, 3]]  # one-token and multi-token words ([4, 0] ends a prompt: 3 is banned at once)
BAD2 = [[9], [3, 3, 3], [6, 6]]
SUP1, BSUP1 = [6, 10], [EOS, 3]
SUP2, BSUP2 = [2, 10], [3, 13]
BSUP3 = [EOS, 3]
PROMPTS = {
    "flat": (np.array([[1, 7, 2, 9], [4, 0, 6, 12], [10, 3, 13, 11]]), None),
    # left-padded prompts of lengths 4, 2 and 3 (HF's pad id in the pad slots, as a tokenizer writes them)
    "padded": (np.array([[1, 7, 2, 9], [PAD, PAD, 4, 0], [PAD, 8, 6, 1]]),
               np.array([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])),  # fmt: skip
    "one": (np.array([[1], [13], [6]]), None),  # T0 = 1: where forced_bos_token_id acts
}
BASE = dict(eos_token_id=EOS, pad_token_id=PAD)

# name: (HF GenerationConfig kwargs, prompts, build chainrule's config with from_dict?, the keys under test)
CASES = {
    "greedy-eos": (dict(max_new_tokens=8, **BASE), "flat", False, ()),
    "greedy-eos-padded": (dict(max_new_tokens=8, **BASE), "padded", True, ()),
    "beam-eos": (dict(max_new_tokens=8, num_beams=3, **BASE), "flat", True, ()),
    "beam-eos-padded": (dict(max_new_tokens=8, num_beams=3, **BASE), "padded", True, ()),
    "beam-two-eos-R3": (dict(max_new_tokens=7, num_beams=4, num_return_sequences=3, length_penalty=0.5,
                             eos_token_id=[EOS, EOS2], pad_token_id=PAD), "padded", True, ("num_return_sequences",)),
    "beam-R2-early-lp2": (dict(max_new_tokens=7, num_beams=3, num_return_sequences=2, early_stopping=EARLY,
                               length_penalty=2.0, **BASE), "padded", False, ("early_stopping", "length_penalty")),
    "greedy-min_new_tokens": (dict(max_new_tokens=8, min_new_tokens=MIN_NEW, **BASE), "padded", True,
                              ("min_new_tokens",)),
    "beam-min_new_tokens": (dict(max_new_tokens=8, num_beams=3, min_new_tokens=MIN_NEW_BEAM, **BASE), "padded", True,
                            ("min_new_tokens",)),
    "greedy-no_repeat_ngram": (dict(max_new_tokens=10, no_repeat_ngram_size=2, **BASE), "padded", True,
                               ("no_repeat_ngram_size",)),
    "beam-no_repeat_ngram": (dict(max_new_tokens=9, num_beams=3, no_repeat_ngram_size=2, **BASE), "padded", True,
                             ("no_repeat_ngram_size",)),
    "greedy-repetition_penalty": (dict(max_new_tokens=8, repetition_penalty=1.6, **BASE), "padded", True,
                                  ("repetition_penalty",)),
    "beam-repetition_penalty": (dict(max_new_tokens=8, num_beams=3, repetition_penalty=1.5, **BASE), "padded",
                                False, ("repetition_penalty",)),
    "greedy-bad_words": (dict(max_new_tokens=8, bad_words_ids=BAD1, **BASE), "padded", True,
                         ("bad_words_ids",)),
    "beam-bad_words": (dict(max_new_tokens=8, num_beams=3, bad_words_ids=BAD2, **BASE),
                       "padded", True, ("bad_words_ids",)),
    "greedy-suppress": (dict(max_new_tokens=8, suppress_tokens=SUP1, begin_suppress_tokens=BSUP1, **BASE),
                        "padded", True, ("suppress_tokens", "begin_suppress_tokens")),
    "beam-suppress": (dict(max_new_tokens=8, num_beams=3, suppress_tokens=SUP2, begin_suppress_tokens=BSUP2,
                           **BASE), "padded", True, ("suppress_tokens", "begin_suppress_tokens")),
    "greedy-forced": (dict(max_new_tokens=6, forced_bos_token_id=8, forced_eos_token_id=EOS, **BASE), "one", True,
                      ("forced_bos_token_id", "forced_eos_token_id")),
    "beam-forced": (dict(max_new_tokens=6, num_beams=3, forced_bos_token_id=8, forced_eos_token_id=EOS, **BASE),
                    "one", True, ("forced_bos_token_id", "forced_eos_token_id")),
    "beam-forced-begin_suppress": (dict(max_new_tokens=5, num_beams=2, forced_bos_token_id=8,
                                        begin_suppress_tokens=BSUP3, **BASE), "one", True,
                                   ("begin_suppress_tokens",)),  # fmt: skip
    "sample-top_k": (dict(max_new_tokens=8, do_sample=True, top_k=5, **BASE), "padded", True, ()),
    "sample-top_p-temperature": (dict(max_new_tokens=8, do_sample=True, top_p=0.8, temperature=1.7, **BASE),
                                 "padded", True, ()),
    "sample-all-R2": (dict(max_new_tokens=8, do_sample=True, top_k=6, top_p=0.9, temperature=1.3,
                           num_return_sequences=2, repetition_penalty=1.2, **BASE), "flat", False, ()),
}
SIDES = ("reference", "fast")


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = _hf_config(vocab_size=V, n_embd=8, bos_token_id=0, eos_token_id=EOS, pad_token_id=PAD)
    model = perturb_gpt2(transformers.GPT2LMHeadModel(config).double().eval(), 2)
    with torch.no_grad():  # a smaller tied wte: a token's own logit then dominates less (fewer endless repeats)
        model.transformer.wte.weight.mul_(0.5)
    return model


@pytest.fixture(scope="module")
def loaded(hf_model):
    return ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict())


def inverse_cdf_multinomial(u: np.ndarray, calls: list):
    """A stand-in for torch.multinomial(probs (B, V), num_samples=1) that draws, at its n-th
    call, the smallest i with cumsum(probs[b])_i > u[b, n] (the last token of nonzero
    probability when no cumulative value exceeds u: chainrule's rule)."""

    def multinomial(probs, num_samples, replacement=False, *, generator=None, out=None):
        assert num_samples == 1 and probs.ndim == 2 and generator is None and out is None, "not _sample's call"
        n = len(calls)
        calls.append(n)
        cdf = torch.cumsum(probs.double(), dim=-1)  # (B, V)
        above = cdf > torch.from_numpy(u[:, n])[:, None]
        first_above = above.to(torch.int8).argmax(dim=-1)
        last_nonzero = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(dim=-1)
        return torch.where(above.any(dim=-1), first_above, last_nonzero)[:, None]

    return multinomial


def hf_generate(model, kwargs, prompt, mask, monkeypatch=None, u=None):
    """HF's tokens (B', T0 + n) for the settings `kwargs`; with u, multinomial draws by inverse CDF."""
    config = transformers.GenerationConfig(**kwargs)
    calls = []
    if u is not None:
        monkeypatch.setattr(torch, "multinomial", inverse_cdf_multinomial(u, calls))
    mask = np.ones(prompt.shape, dtype=np.int64) if mask is None else mask
    try:
        with torch.no_grad():
            out = model.generate(torch.from_numpy(prompt), attention_mask=torch.from_numpy(mask),
                                 generation_config=config)  # fmt: skip
    finally:
        if u is not None:
            monkeypatch.undo()
    if u is not None:
        assert calls, "HF never called torch.multinomial: the sampling path was not taken"
    return out.numpy(), config


def chainrule_generate(side, loaded, config, prompt, mask, u=None):
    params, model_config = loaded
    if side == "reference":
        return ref_gpt.generate(params, model_config, prompt, generation_config=config, attention_mask=mask, u=u)
    return fast_gpt.generate(params, model_config, torch.from_numpy(prompt), generation_config=config,
                             attention_mask=None if mask is None else torch.from_numpy(mask),
                             u=u).numpy()  # fmt: skip


def _uniforms(kwargs, B, seed=3):
    R = kwargs.get("num_return_sequences", 1)
    return np.random.default_rng(seed).random((B * R, kwargs["max_new_tokens"]))


def _agreeing_rows(want, got):
    if want.shape != got.shape:
        return 0
    return int(np.sum(np.all(want == got, axis=1)))


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", list(CASES))
def test_same_tokens_as_hf(hf_model, loaded, monkeypatch, name, side):
    kwargs, prompts, via_dict, _ = CASES[name]
    prompt, mask = PROMPTS[prompts]
    u = _uniforms(kwargs, prompt.shape[0]) if kwargs.get("do_sample") else None
    want, hf_config = hf_generate(hf_model, kwargs, prompt, mask, monkeypatch, u)
    config = GenerationConfig.from_dict(hf_config.to_dict()) if via_dict else GenerationConfig(**kwargs)
    got = np.asarray(chainrule_generate(side, loaded, config, prompt, mask, u))
    print(f"[{name} {side}] rows agreeing with HF: {_agreeing_rows(want, got)}/{want.shape[0]}")
    assert got.shape == want.shape, (got, want)
    assert np.array_equal(got, want), (got, want)


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_tests_its_setting(hf_model, loaded, monkeypatch, name):
    """The negative controls: what each case is about changes HF's output (or, for padded
    batches, chainrule's output without the mask differs from HF's; for sampling, other
    uniforms give HF other tokens) -- so `test_same_tokens_as_hf` would catch its absence."""
    kwargs, prompts, _, keys = CASES[name]
    prompt, mask = PROMPTS[prompts]
    u = _uniforms(kwargs, prompt.shape[0]) if kwargs.get("do_sample") else None
    want, _ = hf_generate(hf_model, kwargs, prompt, mask, monkeypatch, u)
    if keys:
        without = {k: v for k, v in kwargs.items() if k not in keys}
        if "num_return_sequences" in keys:  # one hypothesis per prompt: the first of each R
            other = hf_generate(hf_model, without, prompt, mask)[0]
            assert other.shape[0] != want.shape[0]
        else:
            other = hf_generate(hf_model, without, prompt, mask, monkeypatch, u)[0]
            assert other.shape != want.shape or not np.array_equal(other, want), f"{keys} change nothing here"
    if mask is not None:
        config = GenerationConfig(**kwargs)
        unmasked = np.asarray(chainrule_generate("reference", loaded, config, prompt, None, u))
        assert unmasked.shape != want.shape or not np.array_equal(unmasked, want), "the mask changes nothing here"
    if u is not None:
        other = hf_generate(hf_model, kwargs, prompt, mask, monkeypatch, _uniforms(kwargs, prompt.shape[0], 4))[0]
        assert other.shape != want.shape or not np.array_equal(other, want), "the uniforms change nothing here"
    if "eos" in name.split("-"):  # (removing eos_token_id would not do: HF then takes the model's)
        T0 = prompt.shape[1]
        assert np.any(want[:, T0:] == PAD), "no row ended early on eos: the case would not test eos"


def test_beam_cases_return_hypotheses_of_different_lengths(hf_model):
    """Beam outputs with eos hold hypotheses that ended at different steps (pad after the
    shorter ones): the padding of beam outputs is compared too."""
    kwargs, prompts, _, _ = CASES["beam-two-eos-R3"]
    want, _ = hf_generate(hf_model, kwargs, *PROMPTS[prompts])
    T0 = PROMPTS[prompts][0].shape[1]
    assert np.any(want[:, T0:] == PAD) and np.any(np.all(want[:, T0:] != PAD, axis=1))


@pytest.mark.parametrize("side", SIDES)
def test_beam_sampling_is_refused_by_name(loaded, side):
    prompt, mask = PROMPTS["flat"]
    config = GenerationConfig(max_new_tokens=3, num_beams=2, do_sample=True, **BASE)
    u = np.zeros((prompt.shape[0], 3))
    with pytest.raises(ValueError, match=r"generation_config\.do_sample"):
        chainrule_generate(side, loaded, config, prompt, mask, u)
