"""reference.llama against HF transformers' LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM.

Tiny random models built offline from HF configs, in float64, with every weight moved far from
HF's init (`perturb`: embeddings N(0, 1), linear weights N(0, 1/in), biases N(0, 0.2^2), RMSNorm
weights 1 + N(0, 0.3^2)) and loaded with `from_hf`; or the reference's own `random_params` loaded
into HF through `to_hf`. Cases: Llama with GQA, MHA and MQA (one with head_dim != hidden / heads),
llama3 and linear RoPE scaling (`rope_parameters`), a tied head; Mistral with a sliding window
shorter than the sequence (2 layers of window 3) and longer than it; Qwen2 (q/k/v biases).

Covered, each to LOGIT_ATOL = 1e-10 on logits of magnitude O(1..10): the logits; logits at
positions far from 0 (position_ids given); left- and right-padded batches with their attention
masks and the position ids HF's generate derives (cumsum(mask) - 1, pads at 1), at real
positions; KV-cached decoding (prompt, then one token at a time through HF's cache), plain and
left-padded; greedy `generate` token for token against HF `generate(do_sample=False)`, with eos
and a left-padded batch; `to_hf` loading strictly into HF with the same logits; from_hf(to_hf(x))
bit for bit; old-style configs (rope_theta + rope_scaling, even {"type": ...}) loading as the new
`rope_parameters`; and the options the spec does not implement refused by name.

HF in float64 is not float64 throughout: even after `model.double()` it computes the RMSNorm
(`hidden_states.to(torch.float32)`), the RoPE inverse frequencies (`dtype=torch.float` in the rope
init functions), the RoPE angles and their cos/sin (`position_ids.float() * inv_freq.float()`),
and the eager attention's softmax (`softmax(..., dtype=torch.float32)`) in float32, which leaves
it ~1e-6 from the float64 truth (`test_unpatched_hf_is_float32_inside` measures it). `float64`
below removes exactly those casts, on one model instance, leaving HF's code otherwise as it is:

- every `*RMSNorm` module's forward: HF's, with the variance and the normalization in the
  input's dtype (no float32 round trip);
- every `*RotaryEmbedding` module: `inv_freq` (and `original_inv_freq`) recomputed by HF's own
  rope init function (`compute_default_rope_parameters` or `ROPE_INIT_FUNCTIONS[rope_type]`)
  with `torch.float` patched to float64 for that call; its forward: HF's, with the angles and
  cos/sin in float64 (still under HF's `dynamic_rope_update`);
- attention: "sdpa" (HF's default, which has no float32 cast), or "eager" as a registered
  attention function `chainrule_eager_float64` that runs HF's own `eager_attention_forward`
  with `torch.nn.functional.softmax`'s `dtype=torch.float32` dropped for float64 inputs
  (HF's eager mask function is registered under the same name).

With those, HF and the reference agree to ~1e-14 (printed with -s). Where chainrule.fast.llama
exists, its float64 logits (plain and left-padded) and its greedy generation with eos on a
left-padded batch are held to HF as well.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="HF transformers is not installed (peers extra)")

from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

from chainrule.reference import llama, nn  # noqa: E402
from chainrule.reference.checks import assert_close  # noqa: E402
from chainrule.reference.generation import GenerationConfig  # noqa: E402

LOGIT_ATOL = 1e-10  # float64 on both sides: only the summation order differs
EAGER64 = "chainrule_eager_float64"
ATTNS = ("sdpa", "eager")

# ----------------------------------------------------------------------------- HF in float64


def _rms_norm_float64(self, hidden_states):
    """HF's LlamaRMSNorm.forward without `.to(torch.float32)`: w * (x * rsqrt(mean(x^2) + eps))."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@dynamic_rope_update
def _rotary_float64(self, x, position_ids):
    """HF's LlamaRotaryEmbedding.forward with the angles and cos/sin in float64, not float32."""
    freqs = position_ids[..., None].to(torch.float64) * self.inv_freq.to(device=x.device, dtype=torch.float64)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def _inv_freq_float64(rotary):
    """HF's own rope init function for the module's rope_type, run with torch.float = float64."""
    init = (rotary.compute_default_rope_parameters if rotary.rope_type == "default"
            else ROPE_INIT_FUNCTIONS[rotary.rope_type])  # fmt: skip
    with mock.patch.object(torch, "float", torch.float64):
        inv_freq, scaling = init(rotary.config)
    assert inv_freq.dtype == torch.float64 and scaling == rotary.attention_scaling
    return inv_freq


def _eager_float64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF's eager_attention_forward (of the module's own modeling file), softmax kept in float64."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    softmax = torch.nn.functional.softmax

    def no_upcast(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=None if (dtype == torch.float32 and x.dtype == torch.float64) else dtype)

    with mock.patch.object(torch.nn.functional, "softmax", no_upcast):
        return eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


ALL_ATTENTION_FUNCTIONS.register(EAGER64, _eager_float64)
ALL_MASK_ATTENTION_FUNCTIONS.register(EAGER64, eager_mask)


def float64(model, attn: str = "sdpa"):
    """A float64 HF model without its float32 casts (the module docstring), in place -> model."""
    patched = {"RMSNorm": 0, "RotaryEmbedding": 0}
    for m in model.modules():
        name = type(m).__name__
        if name.endswith("RMSNorm"):
            m.forward = types.MethodType(_rms_norm_float64, m)
            patched["RMSNorm"] += 1
        elif name.endswith("RotaryEmbedding"):
            inv_freq = _inv_freq_float64(m)
            m.inv_freq, m.original_inv_freq = inv_freq, inv_freq.clone()
            m.forward = types.MethodType(_rotary_float64, m)
            patched["RotaryEmbedding"] += 1
    assert patched == {"RMSNorm": 2 * model.config.num_hidden_layers + 1, "RotaryEmbedding": 1}, patched
    model.set_attn_implementation(EAGER64 if attn == "eager" else attn)
    assert model.config._attn_implementation == (EAGER64 if attn == "eager" else attn)
    return model


# ----------------------------------------------------------------------------- the models

BASE = dict(vocab_size=59, hidden_size=24, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, attention_dropout=0.0,
            bos_token_id=0, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)  # fmt: skip
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 256}  # fmt: skip
CASES = {  # name: (model_type, HF config overrides)
    "llama-gqa": ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    "llama-mha": ("llama", dict(num_key_value_heads=4)),
    "llama-mqa": ("llama", dict(num_key_value_heads=1, head_dim=8)),  # head_dim != hidden / heads
    "llama-rope-llama3": ("llama", dict(max_position_embeddings=256, rope_parameters=LLAMA3)),
    "llama-rope-linear": ("llama", dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5})),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "mistral-window-3": ("mistral", dict(sliding_window=3)),  # 2 layers see 1 + 2 (3 - 1) = 5 < T tokens
    "mistral-window-100": ("mistral", dict(sliding_window=100)),  # longer than any sequence here
    "qwen2": ("qwen2", dict(rope_parameters={"rope_type": "default", "rope_theta": 1000.0})),
    "qwen2-mqa-tied": ("qwen2", dict(num_key_value_heads=1, tie_word_embeddings=True)),
}
T_MAX = 23  # the longest sequence the tests feed


def hf_config(model_type: str, **overrides):
    return transformers.AutoConfig.for_model(model_type, **{**BASE, **overrides})


def perturb(model, seed: int):
    """Every weight of a HF Llama/Mistral/Qwen2 away from its init, in place, drawn in float64 from
    `seed`: embeddings N(0, 1) (N(0, 0.3^2) when tied to the head: a token's own logit then dominates
    less, and greedy decoding does not just repeat it), linear weights (out, in) N(0, 1/in) (lm_head
    N(0, 1/C)), biases N(0, 0.2^2), RMSNorm weights 1 + N(0, 0.3^2). -> model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is the embedding: listed once
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if name.endswith("embed_tokens.weight"):
                p.copy_(0.3 * noise if model.config.tie_word_embeddings else noise)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def case(name: str, attn: str = "sdpa"):
    """(HF model in float64 without its float32 casts, reference params, reference config) of a case."""
    model_type, overrides = CASES[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(model_type, **overrides)).double().eval()
    model = float64(perturb(model, seed=sorted(CASES).index(name)), attn)
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head must be tied"
    params, config = llama.from_hf(_state(model), model.config.to_dict())
    return model, params, config


def tokens(config, T, seed=0, B=3):
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(B, T))


def hf_logits(model, x, mask=None, position_ids=None):
    kw = {} if mask is None else {"attention_mask": torch.from_numpy(mask)}
    if position_ids is not None:
        kw["position_ids"] = torch.from_numpy(position_ids)
    with torch.no_grad():
        return model(torch.from_numpy(x), use_cache=False, **kw).logits.numpy()


def agree(quantity, want, got):
    c = assert_close(quantity, want, got, "float64")
    assert c.max_err <= LOGIT_ATOL, str(c)
    print(f"[{quantity}] {c}")
    return c


# ----------------------------------------------------------------------------- logits


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_hf(name, attn):
    model, params, config = case(name, attn)
    for T in (1, 7, T_MAX):
        x = tokens(config, T, seed=T)
        want = hf_logits(model, x)
        assert np.abs(want).max() > 1.0, "logits near 0: the comparison would be trivial"
        agree(f"{name} {attn} T={T} logits vs HF", want, llama.forward(params, config, x))


@pytest.mark.parametrize("name", ["llama-gqa", "llama-rope-llama3", "mistral-window-3", "qwen2"])
def test_logits_far_from_position_0_match_hf(name):
    """position_ids given, starting at 200 (llama3: across its original context of 256): the RoPE
    angles are large there, where HF's float32 angles would be furthest off."""
    model, params, config = case(name)
    config = dataclasses.replace(config, max_position=256)  # HF's RoPE takes any position id
    x = tokens(config, 17, seed=5)
    positions = np.tile(np.arange(200, 217), (3, 1))
    agree(f"{name} logits at positions 200..216", hf_logits(model, x, position_ids=positions),
          llama.forward(params, config, x, position_ids=positions))  # fmt: skip


def test_the_window_is_exercised():
    """Window 3 over 2 layers is not full attention (the reference without it is far off), and
    window 100 on sequences of 23 is (equal to the reference without a window)."""
    x = tokens(case("qwen2")[2], T_MAX, seed=3)
    for name, far in (("mistral-window-3", True), ("mistral-window-100", False)):
        model, params, config = case(name)
        full = llama.forward(params, dataclasses.replace(config, sliding_window=None), x)
        err = np.abs(full - hf_logits(model, x)).max()
        assert (err > 0.1) if far else (err < LOGIT_ATOL), (name, err)


def test_unpatched_hf_is_float32_inside():
    """HF's own float64 model (no patch) is ~1e-6 off: the float32 casts are real, and the
    agreement above is the patches' doing, not the tolerance's."""
    _, params, config = case("llama-gqa")
    state, hf = llama.to_hf(params, config)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf)).double().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = tokens(config, T_MAX)
    err = np.abs(hf_logits(model, x) - llama.forward(params, config, x)).max()
    assert 1e-9 < err < 1e-4, err
    print(f"[unpatched HF float64 vs reference] max |diff| = {err:.3e}")


def test_llama3_scaling_uses_all_three_bands():
    """The llama3 case is not trivially default RoPE: its wavelengths fall in all three bands
    (kept, interpolated, divided by factor), and the reference's frequencies are HF's."""
    model, params, config = case("llama-rope-llama3")
    s = config.rope_scaling
    L = s["original_max_position_embeddings"]
    wavelength = 2 * math.pi / nn.rope_inv_freq(config.head_dim, config.rope_theta)
    high, low = wavelength < L / s["high_freq_factor"], wavelength > L / s["low_freq_factor"]
    assert high.any() and low.any() and (~high & ~low).any(), wavelength
    agree("llama3 inv_freq vs HF", model.model.rotary_emb.inv_freq.numpy(), llama.inv_freq(config))


def test_log_prob_matches_hf_cross_entropy():
    """-log p(x) = HF's float64 cross-entropy on [bos, x] against x, summed."""
    model, params, config = case("qwen2")
    x = tokens(config, 9, seed=2)
    ids = torch.from_numpy(np.concatenate([np.full((3, 1), config.bos_token), x], axis=1))
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
        want = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(1)
    agree("log_prob vs HF", want.numpy(), llama.log_prob(params, config, x))


# ----------------------------------------------------------------------------- padded batches

ROWS = [[5, 9, 2, 44, 17, 3, 8, 30, 12, 1, 40, 7, 7, 22], [11, 31, 7], [50, 4, 4, 21, 6, 19, 2, 33]]
PAD = 0


def padded(side: str, rows=ROWS):
    """rows padded with PAD to one length on `side` -> (tokens (B, T), attention_mask (B, T))."""
    T = max(len(r) for r in rows)
    x, mask = np.full((len(rows), T), PAD, dtype=np.int64), np.zeros((len(rows), T), dtype=np.int64)
    for b, row in enumerate(rows):
        start = T - len(row) if side == "left" else 0
        x[b, start : start + len(row)] = row
        mask[b, start : start + len(row)] = 1
    return x, mask


def hf_positions(mask):
    """Position ids as HF's generate derives them from the attention mask."""
    return np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["llama-gqa", "llama-rope-llama3", "mistral-window-3", "mistral-window-100",
                                  "qwen2-mqa-tied"])  # fmt: skip
def test_padded_logits_match_hf(name, side, attn):
    model, params, config = case(name, attn)
    x, mask = padded(side)
    real = mask == 1
    want = hf_logits(model, x, mask, hf_positions(mask))
    got = llama.forward(params, config, x, mask)
    agree(f"{name} {attn} {side}-padded logits at real positions vs HF", want[real], got[real])
    assert np.all(got[~real] == 0.0), "pad positions' logits are defined as 0"
    for b, row in enumerate(ROWS):  # and those are each row alone
        alone = llama.forward(params, config, np.array([row]))[0]
        agree(f"{name} row {b} {side}-padded vs alone", alone, got[b][real[b]])


# ----------------------------------------------------------------------------- KV cache


def hf_cached(model, x, T0, mask=None):
    """HF's logits (B, T, V): the prompt x[:, :T0] at once, then one token at a time through its
    cache, with the attention mask grown by a 1 and the position ids continued at each step
    (what HF's generate does)."""
    B, T = x.shape
    mask = np.ones((B, T0), dtype=np.int64) if mask is None else mask
    positions = hf_positions(mask)
    with torch.no_grad():
        out = model(torch.from_numpy(x[:, :T0]), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(positions), use_cache=True)  # fmt: skip
        logits, cache, nxt = [out.logits], out.cache, positions.max(axis=1) + 1
        for t in range(T0, T):
            mask = np.concatenate([mask, np.ones((B, 1), dtype=np.int64)], axis=1)
            out = model(torch.from_numpy(x[:, t : t + 1]), attention_mask=torch.from_numpy(mask),
                        position_ids=torch.from_numpy(nxt[:, None]), cache=cache, use_cache=True)  # fmt: skip
            logits.append(out.logits)
            cache, nxt = out.cache, nxt + 1
    return torch.cat(logits, dim=1).numpy()


def reference_cached(params, config, x, T0, mask=None):
    logits, cache = llama.prefill(params, config, llama.init_cache(params, config, x.shape[0]), x[:, :T0], mask)
    out = [logits]
    for t in range(T0, x.shape[1]):
        step, cache = llama.step(params, config, cache, x[:, t])
        out.append(step[:, None])
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("name", list(CASES))
def test_cached_decoding_matches_hf(name, attn):
    model, params, config = case(name, attn)
    x = tokens(config, T_MAX, seed=7)
    want = hf_cached(model, x, T0=4)
    got = reference_cached(params, config, x, T0=4)
    agree(f"{name} {attn} cached logits vs HF cached", want, got)
    agree(f"{name} {attn} cached logits vs HF recompute", hf_logits(model, x), got)


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window-3", "qwen2"])
def test_left_padded_cached_decoding_matches_hf(name):
    model, params, config = case(name)
    prompt, mask = padded("left", [r[:6] for r in ROWS])
    x = np.concatenate([prompt, tokens(config, 12, seed=8)], axis=1)
    want = hf_cached(model, x, prompt.shape[1], mask)
    got = reference_cached(params, config, x, prompt.shape[1], mask)
    real = np.concatenate([mask, np.ones((3, 12), dtype=np.int64)], axis=1) == 1
    agree(f"{name} left-padded cached logits vs HF", want[real], got[real])


# ----------------------------------------------------------------------------- generate


def hf_generate(model, prompt, mask, **kwargs):
    config = transformers.GenerationConfig(do_sample=False, num_beams=1, **kwargs)
    mask = np.ones(prompt.shape, dtype=np.int64) if mask is None else mask
    with torch.no_grad():
        return model.generate(torch.from_numpy(prompt), attention_mask=torch.from_numpy(mask),
                              generation_config=config).numpy()  # fmt: skip


def _eos_for(want, T0):
    """(eos, r, s): an id that ends row r at its new token s >= 1 (its first occurrence there) while
    another row does not end at or before s: the rows end at different steps."""
    new = want[:, T0:]
    for s in range(1, new.shape[1] - 1):
        for r, row in enumerate(new):
            eos = int(row[s])
            if eos != PAD and eos not in row[:s] and any(eos not in o[: s + 1] for o in np.delete(new, r, 0)):
                return eos, r, s
    raise AssertionError(f"no eos id would end the rows at different steps: {new}")


@pytest.mark.parametrize("name", ["llama-gqa", "llama-mqa", "llama-rope-llama3", "llama-tied", "mistral-window-3",
                                  "mistral-window-100", "qwen2", "qwen2-mqa-tied"])  # fmt: skip
def test_greedy_generate_matches_hf(name):
    model, params, config = case(name)
    T0, N = 4, 19
    prompt = tokens(config, T0, seed=3)
    want = hf_generate(model, prompt, None, max_new_tokens=N, eos_token_id=None, pad_token_id=PAD)
    assert want.shape == (3, T0 + N)
    assert np.array_equal(llama.generate(params, config, prompt, N), want)
    assert len(np.unique(want[:, T0:])) > 3, "greedy output is nearly constant: the comparison would be weak"

    eos, r, s = _eos_for(want, T0)  # with eos: rows end independently, then hold pad
    want = hf_generate(model, prompt, None, max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD)
    gen = GenerationConfig(max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD)
    got = llama.generate(params, config, prompt, generation_config=gen)
    assert np.array_equal(got, want), (got, want)
    assert want[r, T0 + s] == eos and np.all(want[r, T0 + s + 1 :] == PAD) and want.shape[1] > T0 + s + 1


@pytest.mark.parametrize("name", ["llama-gqa", "llama-rope-linear", "mistral-window-3", "qwen2"])
def test_left_padded_greedy_generate_matches_hf(name):
    model, params, config = case(name)
    prompt, mask = padded("left", [r[:6] for r in ROWS])  # lengths 6, 3, 6
    N = 14
    want = hf_generate(model, prompt, mask, max_new_tokens=N, eos_token_id=None, pad_token_id=PAD)
    got = llama.generate(params, config, prompt, N, attention_mask=mask)
    assert np.array_equal(got, want), (got, want)
    assert not np.array_equal(llama.generate(params, config, prompt, N), want), "the mask changes nothing here"

    eos, r, s = _eos_for(want, prompt.shape[1])
    want = hf_generate(model, prompt, mask, max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD)
    gen = GenerationConfig(max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD)
    assert np.array_equal(llama.generate(params, config, prompt, generation_config=gen, attention_mask=mask), want)
    assert np.all(want[r, prompt.shape[1] + s + 1 :] == PAD) and want.shape[1] > prompt.shape[1] + s + 1


# ----------------------------------------------------------------------------- to_hf and from_hf

TO_HF = {  # reference configs -> HF, through to_hf
    "llama-gqa": dict(n_kv_head=2),
    "llama-interleaved": dict(n_kv_head=2, rope_layout="interleaved"),
    "llama-tied-llama3": dict(n_kv_head=1, tie_word_embeddings=True, max_position=300, rope_scaling={
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256}),
    "llama-linear": dict(n_kv_head=4, rope_scaling={"rope_type": "linear", "factor": 3.0}),
    "mistral": dict(n_kv_head=2, sliding_window=4, head_dim=10),
    "qwen2": dict(n_kv_head=2, qkv_bias=True, rope_theta=1e6),
}


def reference_model(name):
    sizes = dict(vocab_size=61, max_position=64, n_layer=2, n_head=4, n_embd=24, intermediate_size=29,
                 rope_theta=300.0, rms_norm_eps=1e-6)  # fmt: skip
    config = llama.Config(**{**sizes, **TO_HF[name]})
    return llama.random_params(config, np.random.default_rng(sorted(TO_HF).index(name))), config


def load_to_hf(params, config):
    state, hf = llama.to_hf(params, config)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf)).double().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return float64(model), state, hf


@pytest.mark.parametrize("name", list(TO_HF))
def test_to_hf_loads_strictly_with_the_same_logits(name):
    params, config = reference_model(name)
    model, state, hf = load_to_hf(params, config)
    assert type(model).__name__ == llama.MODEL_TYPES[hf["model_type"]]
    x = tokens(config, T_MAX, seed=11)
    agree(f"to_hf {name} logits", hf_logits(model, x), llama.forward(params, config, x))
    mask = padded("left", [r[: config.vocab_size] for r in ROWS])[1]
    agree(f"to_hf {name} left-padded logits", hf_logits(model, x[:, :14], mask, hf_positions(mask))[mask == 1],
          llama.forward(params, config, x[:, :14], mask)[mask == 1])  # fmt: skip


@pytest.mark.parametrize("name", list(TO_HF))
def test_from_hf_of_to_hf_is_the_identity(name):
    params, config = reference_model(name)
    model, state, hf = load_to_hf(params, config)
    for source in (state, _state(model)):  # the arrays to_hf wrote, and what HF holds after loading them
        back, config2 = llama.from_hf(source, hf)
        if config.rope_layout == "interleaved":  # HF's layout is "half": convert back
            back, config2 = llama.convert_rope_layout(back, config2, "interleaved")
        assert config2 == config, (config2, config)
        assert back.keys() == params.keys()
        for k in params:
            assert np.array_equal(back[k], params[k]), k
    _, config3 = llama.from_hf(_state(model), model.config.to_dict())  # HF's own config dict
    assert config3 == llama.convert_rope_layout(params, config, "half")[1]


def test_to_hf_refuses_what_has_no_hf_layout():
    params, config = reference_model("qwen2")
    with pytest.raises(ValueError, match="model_type"):
        llama.to_hf(params, config, "llama")
    params, config = reference_model("mistral")
    with pytest.raises(ValueError, match="model_type"):
        llama.to_hf(params, config, "qwen2")


# ----------------------------------------------------------------------------- old-style configs

OLD_STYLE = {  # config.json as transformers < 5 wrote it: rope_theta and rope_scaling, no rope_parameters
    "llama3": ("llama", {"rope_theta": 10000.0, "max_position_embeddings": 256, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256}}),
    "linear-type-key": ("llama", {"rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 2.0}}),
    "theta-only": ("mistral", {"rope_theta": 1e6, "rope_scaling": None, "sliding_window": 5}),
    "qwen2-window-unused": ("qwen2", {"rope_theta": 1e6, "use_sliding_window": False, "sliding_window": 131072,
                                      "max_window_layers": 28}),
}


@pytest.mark.parametrize("name", list(OLD_STYLE))
def test_old_style_configs_load(name):
    model_type, old = OLD_STYLE[name]
    raw = {"model_type": model_type, **BASE, **old}
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**raw)).double().eval()
    model = float64(perturb(model, 3))
    params, config = llama.from_hf(_state(model), raw)  # the old dict itself, not HF's standardized one
    assert config == llama.config_from_hf(model.config.to_dict())  # = what the new-style dict gives
    assert config.rope_theta == old["rope_theta"]
    scaling = old.get("rope_scaling")
    if scaling is None:
        assert config.rope_scaling is None
    else:
        assert config.rope_scaling["rope_type"] == scaling.get("rope_type", scaling.get("type"))
    assert config.sliding_window == (5 if model_type == "mistral" else None)
    x = tokens(config, T_MAX, seed=13)
    agree(f"old-style {name} logits", hf_logits(model, x), llama.forward(params, config, x))


# ----------------------------------------------------------------------------- refused options

REFUSED = [  # (model_type, HF config overrides, the name the error must carry)
    ("llama", dict(attention_bias=True), "attention_bias"),
    ("llama", dict(mlp_bias=True), "mlp_bias"),
    ("llama", dict(hidden_act="gelu"), "hidden_act"),
    ("mistral", dict(hidden_act="relu"), "hidden_act"),
    ("llama", dict(pretraining_tp=2), "pretraining_tp"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1), "use_sliding_window"),
    ("llama", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}), "yarn"),
    ("llama", dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}), "dynamic"),
    ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
     "partial_rotary_factor"),
]


@pytest.mark.parametrize("model_type,overrides,key", REFUSED, ids=[r[2] + "-" + r[0] for r in REFUSED])
def test_unsupported_options_are_refused_by_name(model_type, overrides, key):
    hf = hf_config(model_type, **overrides).to_dict()
    with pytest.raises(ValueError, match=key):
        llama.config_from_hf(hf)
    model, _, _ = case("qwen2" if model_type == "qwen2" else "llama-gqa")  # the same sizes
    with pytest.raises(ValueError, match=key):
        llama.from_hf(_state(model), hf)


def test_other_model_types_and_layer_types_are_refused():
    with pytest.raises(ValueError, match="model_type"):
        llama.config_from_hf(hf_config("llama").to_dict() | {"model_type": "gemma"})
    with pytest.raises(ValueError, match="layer_types"):
        llama.config_from_hf(hf_config("llama").to_dict() | {"layer_types": ["sliding_attention", "full_attention"]})


def test_bad_state_dicts_are_refused_by_key():
    model, params, config = case("llama-tied")
    hf = model.config.to_dict()
    state = _state(model)
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra"):
        llama.from_hf(state, hf)
    state = _state(model)
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.up\.w"):
        llama.from_hf(state, hf)
    state = _state(model)
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head"):
        llama.from_hf(state, hf)


# ----------------------------------------------------------------------------- the fast path, when present


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window-3", "qwen2-mqa-tied"])
def test_fast_logits_match_hf(name):
    fast_llama = pytest.importorskip("chainrule.fast.llama", reason="chainrule.fast.llama is not written yet")
    model, params, config = case(name)
    x = tokens(config, T_MAX, seed=17)
    got = fast_llama.forward(params, config, torch.from_numpy(x))
    agree(f"fast {name} logits vs HF", hf_logits(model, x), got.detach().numpy())
    x, mask = padded("left")
    got = fast_llama.forward(params, config, torch.from_numpy(x), torch.from_numpy(mask)).detach().numpy()
    agree(f"fast {name} left-padded logits vs HF", hf_logits(model, x, mask, hf_positions(mask))[mask == 1],
          got[mask == 1])  # fmt: skip


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window-3", "qwen2-mqa-tied"])
def test_fast_generate_matches_hf(name):
    """fast.llama.generate, greedy, on a left-padded batch with eos: HF's tokens."""
    fast_llama = pytest.importorskip("chainrule.fast.llama", reason="chainrule.fast.llama is not written yet")
    model, params, config = case(name)
    prompt, mask = padded("left", [r[:6] for r in ROWS])
    N = 14
    want = hf_generate(model, prompt, mask, max_new_tokens=N, eos_token_id=None, pad_token_id=PAD)
    eos, r, s = _eos_for(want, prompt.shape[1])
    want = hf_generate(model, prompt, mask, max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD)
    gen = GenerationConfig(max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD)
    got = fast_llama.generate(params, config, torch.from_numpy(prompt), generation_config=gen,
                              attention_mask=torch.from_numpy(mask))  # fmt: skip
    assert np.array_equal(got.cpu().numpy(), want), (got, want)
