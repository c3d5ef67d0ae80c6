"""reference.gpt and fast.gpt against HF transformers' GPT-2, a peer nobody here wrote.

A random tiny GPT2LMHeadModel, built offline from a GPT2Config, in float64 with
its weights (LayerNorms included) perturbed far from the init: loaded with
`from_hf_gpt2` it gives the same logits (<= 1e-9), the same greedy tokens as HF
`generate(do_sample=False)`, and `to_hf_gpt2` round-trips. Unsupported HF options
(an untied LM head, another activation) are rejected by name.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="HF transformers is not installed (peers extra)")

from chainrule.fast import gpt as fast_gpt  # noqa: E402
from chainrule.reference import gpt as ref_gpt  # noqa: E402
from chainrule.reference.checks import assert_close  # noqa: E402
from diff_tests.peers.hf_weights import perturb_gpt2  # noqa: E402

LOGIT_ATOL = 1e-9  # HF and chainrule in float64: only the summation order differs


def _hf_config(**overrides):
    kw = dict(
        vocab_size=59, n_positions=23, n_embd=6, n_layer=2, n_head=2, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None,
        pad_token_id=None, tie_word_embeddings=True,
    )  # fmt: skip
    kw.update(overrides)
    return transformers.GPT2Config(**kw)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_hf_config()).double().eval()
    model = perturb_gpt2(model, 1)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head must be tied"
    return model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


@pytest.fixture(scope="module")
def loaded(hf_model):
    return ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict())


def _tokens(config, T, seed=0, B=3):
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(B, T))


@pytest.mark.parametrize("T", [1, 7, 23])
def test_reference_logits_match_hf(hf_model, loaded, T):
    params, config = loaded
    tokens = _tokens(config, T)
    want = _hf_logits(hf_model, tokens)
    assert np.abs(want).max() > 1.0, "logits near 0: the comparison would be trivial"
    got = ref_gpt.forward(params, config, tokens)
    c = assert_close("logits vs HF", want, got, "float64")
    assert c.max_err <= LOGIT_ATOL, str(c)
    print(f"[reference vs HF] {c}")


@pytest.mark.parametrize("T", [1, 23])
def test_fast_logits_match_hf(hf_model, loaded, T):
    params, config = loaded
    tokens = _tokens(config, T, seed=1)
    want = _hf_logits(hf_model, tokens)
    got = fast_gpt.forward(params, config, torch.from_numpy(tokens)).detach().numpy()
    c = assert_close("fast logits vs HF", want, got, "float64")
    assert c.max_err <= LOGIT_ATOL, str(c)
    print(f"[fast vs HF] {c}")


def test_log_prob_matches_hf_cross_entropy(hf_model, loaded):
    """-log p(x) = the summed cross-entropy of HF's float64 logits on [bos, x] against x.
    (HF's own `.loss` upcasts to float32, so the cross-entropy is taken here in float64.)"""
    params, config = loaded
    x = _tokens(config, 9, seed=2)
    ids = torch.from_numpy(np.concatenate([np.full((x.shape[0], 1), config.bos_token), x], axis=1))
    with torch.no_grad():
        logits = hf_model(ids[:, :-1]).logits  # (B, T, V) float64
        want = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(1)
    assert want.dtype == torch.float64
    c = assert_close("log_prob vs HF", want.numpy(), ref_gpt.log_prob(params, config, x), "float64")
    print(f"[reference vs HF] {c}")


@pytest.mark.parametrize("T0,N", [(1, 22), (4, 12)])
def test_greedy_tokens_match_hf_generate(hf_model, loaded, T0, N):
    params, config = loaded
    prompt = _tokens(config, T0, seed=3)
    with torch.no_grad():
        want = hf_model.generate(
            torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            max_new_tokens=N, min_new_tokens=0, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=None,
        ).numpy()  # fmt: skip
    assert want.shape == (prompt.shape[0], T0 + N)
    assert np.array_equal(ref_gpt.greedy(params, config, prompt, N), want)
    got = fast_gpt.greedy(params, config, torch.from_numpy(prompt), N)
    assert np.array_equal(got.cpu().numpy(), want)
    assert len(np.unique(want[:, T0:])) > 2, "greedy output is nearly constant: the comparison would be weak"


def test_to_hf_gpt2_round_trip(hf_model, loaded):
    params, config = loaded
    state, hf_config = ref_gpt.to_hf_gpt2(params, config)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).double().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    tokens = _tokens(config, 23, seed=4)
    c = assert_close("round-trip logits", _hf_logits(hf_model, tokens), _hf_logits(model, tokens), "float64")
    assert c.max_err == 0.0, f"the round-tripped HF model computes different logits: {c}"
    back, config2 = ref_gpt.from_hf_gpt2(_state(model), model.config.to_dict())
    assert config2 == config
    assert back.keys() == params.keys()
    for k in params:
        assert np.array_equal(back[k], params[k]), k


def test_rejects_untied_lm_head(hf_model):
    state = _state(hf_model)
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head"):
        ref_gpt.from_hf_gpt2(state, hf_model.config.to_dict())
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict() | {"tie_word_embeddings": False})


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_rejects_unsupported_activation(hf_model, activation):
    with pytest.raises(ValueError, match="activation_function"):
        ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict() | {"activation_function": activation})


def test_rejects_unexpected_and_missing_keys(hf_model):
    state = _state(hf_model)
    state["transformer.h.0.attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra"):
        ref_gpt.from_hf_gpt2(state, hf_model.config.to_dict())
    state = _state(hf_model)
    del state["transformer.h.1.ln_2.bias"]
    with pytest.raises(ValueError, match=r"blocks\.1\.ln_2\.b"):
        ref_gpt.from_hf_gpt2(state, hf_model.config.to_dict())
