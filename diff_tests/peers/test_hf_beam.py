"""reference.beam and fast.beam against HF transformers' beam search, a peer nobody here wrote.

A random tiny GPT2LMHeadModel in float64 with perturbed weights (as in
test_hf_gpt2.py), bos/eos/pad ids inside the vocabulary, loaded into chainrule with
`from_hf_gpt2`; then `model.generate(num_beams=W, do_sample=False, early_stopping=...,
length_penalty=..., max_new_tokens=N, num_return_sequences=R)` against
`reference.gpt.beam_search` / `fast.beam.gpt_beam_search` on the same prompts: the same sequences (HF pads finished
hypotheses with pad_token_id, here `pad`), and the same `sequences_scores`.

HF scores in float32 (it casts the last logits to float32 before its
log-softmax and keeps the running sums in float32), chainrule in float64, so
scores agree within the float32 tolerance and sequences exactly (no near-ties on
this model). The settings keep vocab_size > 2 * num_beams, so HF never needs its
-1e9 filler beams (see reference/beam.py). These tests also pin down what HF
5.x does with the length: its scores are sum log p / L ** length_penalty with L
the number of *generated* tokens (an ending eos included, the prompt excluded)
-- with the prompt counted, no length_penalty != 0 case here would match.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="HF transformers is not installed (peers extra)")

from diff_tests.peers.hf_weights import perturb_gpt2 as _perturb  # noqa: E402
from diff_tests.peers.test_hf_gpt2 import _hf_config, _state  # noqa: E402
from chainrule.fast import beam as fast_beam  # noqa: E402
from chainrule.reference import gpt as ref_gpt  # noqa: E402
from chainrule.reference.checks import assert_close  # noqa: E402

V, EOS, PAD = 12, 3, 5
PROMPT = np.array([[1, 7, 2], [4, 0, 9]])
CASES = list(itertools.product((True, False, "never"), (1.0, 0.0, -0.7, 2.0)))


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = _hf_config(vocab_size=V, bos_token_id=0, eos_token_id=EOS, pad_token_id=PAD)
    return _perturb(transformers.GPT2LMHeadModel(config).double().eval(), 1)


@pytest.fixture(scope="module")
def loaded(hf_model):
    return ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict())


def _hf_beam(model, prompt, *, W, N, R, eos, early, lp):
    with torch.no_grad():
        out = model.generate(
            torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            num_beams=W, do_sample=False, early_stopping=early, length_penalty=lp, max_new_tokens=N,
            num_return_sequences=R, return_dict_in_generate=True, output_scores=True,
            eos_token_id=eos, pad_token_id=PAD,
        )  # fmt: skip
    return out.sequences.numpy(), out.sequences_scores.numpy()


def _compare(model, loaded, *, W, N, R, eos, early, lp):
    params, config = loaded
    hf_sequences, hf_scores = _hf_beam(model, PROMPT, W=W, N=N, R=R, eos=eos, early=early, lp=lp)
    kw = dict(eos=eos, length_penalty=lp, early_stopping=early, num_return_sequences=R, pad=PAD)
    results = {
        "reference": ref_gpt.beam_search(params, config, PROMPT, W, N, **kw),
        "fast": fast_beam.gpt_beam_search(params, config, PROMPT, W, N, **kw),
    }
    for name, r in results.items():
        B = PROMPT.shape[0]
        sequences = np.asarray(r.sequences).reshape(B * R, -1)
        assert sequences.shape == hf_sequences.shape, (name, sequences, hf_sequences)
        assert np.array_equal(sequences, hf_sequences), (name, sequences, hf_sequences)
        assert_close(f"beam scores ({name} vs HF)", np.asarray(r.scores).reshape(-1), hf_scores, "float32")
    return results["reference"]


@pytest.mark.parametrize("early, lp", CASES, ids=[f"{e}-lp{p}" for e, p in CASES])
def test_same_hypotheses_as_hf(hf_model, loaded, early, lp):
    r = _compare(hf_model, loaded, W=4, N=6, R=2, eos=EOS, early=early, lp=lp)
    assert np.any(r.lengths < 6), "no hypothesis ended on eos: the case would not test the length rule"


@pytest.mark.parametrize("W, N, R", [(2, 4, 2), (4, 5, 3), (5, 5, 5)])  # W=1 is greedy in HF (no scores)
def test_widths_without_eos(hf_model, loaded, W, N, R):
    _compare(hf_model, loaded, W=W, N=N, R=R, eos=None, early=False, lp=1.0)


def test_early_stopping_modes_differ_in_hf_too(hf_model, loaded):
    """On this model, with length_penalty 2, the three modes return three different
    results in HF: `test_same_hypotheses_as_hf` tells them apart."""
    scores = {early: _hf_beam(hf_model, PROMPT, W=4, N=6, R=2, eos=EOS, early=early, lp=2.0)[1].tobytes()
              for early in (True, False, "never")}  # fmt: skip
    assert len(set(scores.values())) == 3
