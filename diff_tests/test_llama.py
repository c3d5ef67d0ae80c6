"""reference.llama (float64 NumPy, the truth) against every backend of fast.llama.

Three configs with awkward sizes, the same parameters on every backend, far from the init
(`reference.llama.random_params`):

    mqa-hd2         MQA (3 query heads, 1 K/V head), head_dim 2 (n_embd 5: head_dim given),
                    Qwen2's q/k/v biases, tied head, Meta's interleaved RoPE layout
    mha-hd16-w7     MHA (n_kv_head = n_head = 2), head_dim 16, untied head, llama3 RoPE scaling
                    (a band of frequencies smoothly interpolated), a sliding window of 7 < T
    gqa-hd4-w64     GQA (6 query heads, 2 K/V heads), head_dim 4, linear RoPE scaling, Gemma's
                    (1 + w) norm, a window of 64: longer than T = 59, shorter than T = 113

Compared: logits and log_prob (T = 1, 59, 113; low precision against the naive same-dtype
baseline: the spec itself in float32 NumPy, `reference.checks.naive_float32`), padded logits,
log_prob and prefill + steps (left, right and hole padding), explicit position ids, logits
through the KV cache (chunked prefill + steps), greedy and sampled tokens
(`reference.checks.assert_tokens`), generation with eos, stop sequences and processors
(float64: token for token), gradients of the mean NLL (autograd vs finite differences of the
reference), the CPU inference kernels, and bad input refused with the reference's message.
On cupy-f64 the reference itself runs on CuPy arrays.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

from diff_tests.conftest import check
from chainrule.fast import gpt as fast_gpt
from chainrule.fast import llama as fast_llama
from chainrule.reference import generation
from chainrule.reference import llama as ref_llama
from chainrule.reference.checks import FD_ACCURACY, assert_tokens, finite_difference_grad, naive_float32

Config = ref_llama.Config
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip
CONFIGS = {
    "mqa-hd2": Config(vocab_size=59, max_position=113, n_layer=2, n_head=3, n_kv_head=1, n_embd=5,
                      intermediate_size=7, head_dim=2, qkv_bias=True, tie_word_embeddings=True,
                      rope_layout="interleaved", bos_token=7),
    "mha-hd16-w7": Config(vocab_size=113, max_position=113, n_layer=2, n_head=2, n_kv_head=2, n_embd=9,
                          intermediate_size=11, head_dim=16, rope_theta=500000.0, rope_scaling=LLAMA3,
                          sliding_window=7),
    "gqa-hd4-w64": Config(vocab_size=59, max_position=113, n_layer=2, n_head=6, n_kv_head=2, n_embd=11,
                          intermediate_size=13, head_dim=4, rope_scaling={"rope_type": "linear", "factor": 2.0},
                          norm_offset=1, sliding_window=64, bos_token=3),
}  # fmt: skip
CASES = [(name, T) for name in CONFIGS for T in (1, 59, 113)]
BATCH = 2


@functools.lru_cache(maxsize=None)
def case(name: str, T: int):
    """(config, float64 params, tokens (B, T), reference logits) -- computed once per process."""
    config = CONFIGS[name]
    params = ref_llama.random_params(config, np.random.default_rng(2000 + T + len(name)))
    tokens = np.random.default_rng(T + 1).integers(0, config.vocab_size, size=(BATCH, T))
    return config, params, tokens, ref_llama.forward(params, config, tokens)


def _case_id(c):
    return f"{c[0]}-T{c[1]}"


def _model(side):
    return ref_llama if side.is_cupy else fast_llama


def _opt(side, a):
    return None if a is None else side.array(a)


def forward(side, P, config, tokens, mask=None, naive=False, position_ids=None):
    """The backend's logits as float64 NumPy (naive: fast.llama's attn_impl="math")."""
    if side.is_cupy:
        return side.numpy(ref_llama.forward(P, config, side.array(tokens), _opt(side, mask), _opt(side, position_ids)))
    return side.numpy(fast_llama.forward(P, config, side.array(tokens), _opt(side, mask), _opt(side, position_ids),
                                         attn_impl="math" if naive else "sdpa"))  # fmt: skip


def log_prob(side, P, config, tokens, mask=None, naive=False):
    if side.is_cupy:
        return side.numpy(ref_llama.log_prob(P, config, side.array(tokens), _opt(side, mask)))
    return side.numpy(fast_llama.log_prob(P, config, side.array(tokens), _opt(side, mask),
                                          attn_impl="math" if naive else "sdpa"))  # fmt: skip


def naive(side, reference_fn, fast_fn, params, P, config, *args):
    """The naive same-dtype baseline: float32 -- the spec itself in float32 NumPy; bfloat16 --
    fast.llama's unfused attn_impl="math" (NumPy has no bfloat16); float64 -- None."""
    if side.dtype == "float32":
        return naive_float32(reference_fn, params, config, *args)
    if side.dtype == "bfloat16":
        return fast_fn(side, P, config, *args, naive=True)
    return None


def cached_logits(side, P, config, tokens, chunks):
    from chainrule.reference.checks import logits_through_cache

    return logits_through_cache(_model(side), P, config, side.array(tokens), chunks)


# ----------------------------------------------------------------------------- teacher forcing


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_logits(side, case_key):
    config, params, tokens, truth = case(*case_key)
    P = side.params(params)
    got = forward(side, P, config, tokens)
    assert got.shape == (BATCH, case_key[1], config.vocab_size)
    check("logits", truth, got, side, naive=naive(side, ref_llama.forward, forward, params, P, config, tokens))


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_log_prob(side, case_key):
    config, params, tokens, _ = case(*case_key)
    truth = ref_llama.log_prob(params, config, tokens)
    P = side.params(params)
    got = log_prob(side, P, config, tokens)
    assert got.shape == (BATCH,)
    check("log_prob", truth, got, side, naive=naive(side, ref_llama.log_prob, log_prob, params, P, config, tokens))


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_kv_cache_logits(side, case_key):
    """Chunked prefill of a random-sized prefix, then one step per token = forward (with a
    window of 7 the steps attend to the cache's last 7 positions)."""
    config, params, tokens, truth = case(*case_key)
    T = case_key[1]
    rng = np.random.default_rng(T + 5)
    chunks, left = [], T // 2
    while left:
        chunks.append(int(rng.integers(1, left + 1)))
        left -= chunks[-1]
    P = side.params(params)
    got = cached_logits(side, P, config, tokens, chunks)
    check(f"cache logits (prefill {chunks} + {T - T // 2} steps)", truth, got, side,
          naive=naive(side, ref_llama.forward, forward, params, P, config, tokens))  # fmt: skip


# ----------------------------------------------------------------------------- padded batches, position ids

ROWS = [[5, 9, 2, 30, 17, 3, 8, 20, 11, 4, 4, 13], [11, 31, 7], [4], [22, 4, 4, 21, 6, 0, 9, 1]]
PAD = 0
LAYOUTS = ["left", "right", "hole"]
PADDED_CONFIGS = ["mqa-hd2", "mha-hd16-w7"]  # the window (7) shorter than the longest row: measured in positions


def layout(name: str):
    """ROWS in one (B, T) batch -> (tokens, mask) for name in left / right / hole."""
    T = max(len(r) for r in ROWS) + (2 if name == "hole" else 0)
    tokens = np.full((len(ROWS), T), PAD, dtype=np.int64)
    mask = np.zeros((len(ROWS), T), dtype=np.int64)
    for b, row in enumerate(ROWS):
        if name == "hole":  # the first token, two pads, then the rest; padded on the right
            cols = [0] + list(range(3, 3 + len(row) - 1))
        else:
            start = T - len(row) if name == "left" else 0
            cols = list(range(start, start + len(row)))
        tokens[b, cols] = row
        mask[b, cols] = 1
    return tokens, mask


@functools.lru_cache(maxsize=None)
def padded_params(name: str):
    return ref_llama.random_params(CONFIGS[name], np.random.default_rng(31))


@pytest.mark.parametrize("name", PADDED_CONFIGS)
@pytest.mark.parametrize("pad", LAYOUTS)
def test_padded_logits(side, name, pad):
    config, params = CONFIGS[name], padded_params(name)
    tokens, mask = layout(pad)
    truth = ref_llama.forward(params, config, tokens, mask)
    P = side.params(params)
    got = forward(side, P, config, tokens, mask)
    check(f"{pad}-padded logits", truth, got, side, naive=naive(side, ref_llama.forward, forward, params, P, config,
                                                                  tokens, mask))  # fmt: skip
    assert np.all(got[mask == 0] == 0.0), "pads' logits are 0 by definition, exactly"


@pytest.mark.parametrize("name", PADDED_CONFIGS)
@pytest.mark.parametrize("pad", LAYOUTS)
def test_padded_log_prob(side, name, pad):
    config, params = CONFIGS[name], padded_params(name)
    tokens, mask = layout(pad)
    truth = ref_llama.log_prob(params, config, tokens, mask)
    P = side.params(params)
    got = log_prob(side, P, config, tokens, mask)
    check(f"{pad}-padded log_prob", truth, got, side,
          naive=naive(side, ref_llama.log_prob, log_prob, params, P, config, tokens, mask))  # fmt: skip


@pytest.mark.parametrize("name", PADDED_CONFIGS)
@pytest.mark.parametrize("pad", LAYOUTS)
def test_padded_prefill_then_steps(side, name, pad):
    """Prefill the padded batch, then an unpadded chunk of 3 and 6 steps: forward on the whole,
    mask extended by ones (every chunk must hold a real token per row, so the padded part is one)."""
    config, params = CONFIGS[name], padded_params(name)
    tokens, mask = layout(pad)
    more = np.random.default_rng(3).integers(0, config.vocab_size, size=(len(ROWS), 9))
    whole, whole_mask = np.concatenate([tokens, more], 1), np.concatenate([mask, np.ones_like(more)], 1)
    truth = ref_llama.forward(params, config, whole, whole_mask)
    m, P = _model(side), side.params(params)
    cache = m.init_cache(P, config, len(ROWS))
    logits, cache = m.prefill(P, config, cache, side.array(tokens), side.array(mask))
    got = [side.numpy(logits)]
    logits, cache = m.prefill(P, config, cache, side.array(more[:, :3]))
    got.append(side.numpy(logits))
    for t in range(3, more.shape[1]):
        logits_t, cache = m.step(P, config, cache, side.array(more[:, t]))
        got.append(side.numpy(logits_t)[:, None])
    check(f"{pad}-padded prefill + chunk of 3 + steps", truth, np.concatenate(got, 1), side,
          naive=naive(side, ref_llama.forward, forward, params, P, config, whole, whole_mask))  # fmt: skip


@pytest.mark.parametrize("name", PADDED_CONFIGS)
def test_position_ids(side, name):
    """Explicit position ids: forward, and a prefill with them followed by a chunk and steps at
    the default positions (a cache whose key positions are not their indices)."""
    config, params = CONFIGS[name], padded_params(name)
    rng = np.random.default_rng(8)
    tokens = rng.integers(0, config.vocab_size, size=(3, 17))
    position_ids = np.sort(rng.choice(40, size=(3, 17), replace=True), axis=1) + np.array([[0], [30], [60]])
    truth = ref_llama.forward(params, config, tokens, position_ids=position_ids)
    P = side.params(params)
    got = forward(side, P, config, tokens, position_ids=position_ids)
    check("logits (position_ids)", truth, got, side, naive=naive(
        side, lambda p, c, x, position_ids: ref_llama.forward(p, c, x, position_ids=position_ids),
        lambda s, P_, c, x, position_ids, naive: forward(s, P_, c, x, None, naive, position_ids),
        params, P, config, tokens, position_ids))  # fmt: skip
    # a prefill at explicit positions, then default positions (continuing from the count of tokens)
    ref_cache = ref_llama.init_cache(params, config, 3)
    ref_out, ref_cache = ref_llama.prefill(params, config, ref_cache, tokens[:, :9], position_ids=position_ids[:, :9])
    ref_rest, ref_cache = ref_llama.prefill(params, config, ref_cache, tokens[:, 9:14])
    ref_steps = [ref_llama.step(params, config, ref_cache, tokens[:, t])[0] for t in (14,)]
    m = _model(side)
    cache = m.init_cache(P, config, 3)
    out, cache = m.prefill(P, config, cache, side.array(tokens[:, :9]), position_ids=side.array(position_ids[:, :9]))
    rest, cache = m.prefill(P, config, cache, side.array(tokens[:, 9:14]))
    step, cache = m.step(P, config, cache, side.array(tokens[:, 14]))
    truth = np.concatenate([ref_out, ref_rest, ref_steps[0][:, None]], axis=1)
    got = np.concatenate([side.numpy(out), side.numpy(rest), side.numpy(step)[:, None]], axis=1)
    low = None
    if side.dtype == "float32":  # the naive baseline of the same three calls, the spec in float32
        p32 = {k: v.astype(np.float32) for k, v in params.items()}
        c32 = ref_llama.init_cache(p32, config, 3)
        a, c32 = ref_llama.prefill(p32, config, c32, tokens[:, :9], position_ids=position_ids[:, :9])
        b, c32 = ref_llama.prefill(p32, config, c32, tokens[:, 9:14])
        s, _ = ref_llama.step(p32, config, c32, tokens[:, 14])
        assert a.dtype == b.dtype == s.dtype == np.float32
        low = np.concatenate([a, b, s[:, None]], axis=1).astype(np.float64)
    elif side.dtype == "bfloat16":
        pytest.skip("the bfloat16 baseline of a cache run is the fast path itself: judged by the logits rows above")
    check("prefill at position_ids, then default positions", truth, got, side, naive=low)


# ----------------------------------------------------------------------------- generation


def _prompt_and_steps(name: str, T: int):
    """A prompt and a number of new tokens whose whole sequence fills length T + 1."""
    config, params, _, _ = case(name, T)
    T0 = min(T, 5)
    N = T - T0 + 1  # the last token is never fed: T0 + N - 1 = T <= max_position
    prompt = np.random.default_rng(T + 11).integers(0, config.vocab_size, size=(BATCH, T0))
    return config, params, prompt, N


def _generate(side, P, config, prompt, N, u=None):
    return side.numpy(_model(side).generate(P, config, side.array(prompt), N, u=u))


def _check_generation(what, side, P, params, config, prompt, got, N, u=None):
    """Every generated token judged against the reference's choice given the backend's own prefix
    (`assert_tokens`): float64 token for token; low precision where the reference margin is clear
    of the backend's step-logit error, measured through its cache (prompt prefill, then steps)."""
    T0 = prompt.shape[1]
    fast = (lambda x: cached_logits(side, P, config, x, [T0])) if side.low_precision else None
    result = assert_tokens(f"[{side.name}] {what}", prompt, got, lambda x: ref_llama.forward(params, config, x),
                           side.dtype, u=u, fast=fast, max_new_tokens=N)  # fmt: skip
    print(result)


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_greedy_tokens(side, case_key):
    config, params, prompt, N = _prompt_and_steps(*case_key)
    P = side.params(params)
    got = _generate(side, P, config, prompt, N)
    _check_generation("greedy tokens", side, P, params, config, prompt, got, N)


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_sampled_tokens_shared_uniforms(side, case_key):
    config, params, prompt, N = _prompt_and_steps(*case_key)
    u = np.random.default_rng(case_key[1] + 17).random((BATCH, N))
    P = side.params(params)
    got = _generate(side, P, config, prompt, N, u=u)
    _check_generation("sampled tokens", side, P, params, config, prompt, got, N, u=u)


def test_sample_and_greedy_helpers(side):
    """fast.llama.sample(rng) draws u = rng.random((B, N)) and generates with it; greedy is generate."""
    if side.is_cupy:
        pytest.skip("greedy / sample are fast.llama helpers (reference.llama has generate)")
    config, params, prompt, N = _prompt_and_steps("gqa-hd4-w64", 59)
    P = side.params(params)
    u = np.random.default_rng(3).random((BATCH, N))
    got = side.numpy(fast_llama.sample(P, config, np.random.default_rng(3), side.array(prompt), N))
    _check_generation("sample(rng) tokens", side, P, params, config, prompt, got, N, u=u)
    got = side.numpy(fast_llama.greedy(P, config, side.array(prompt), N))
    _check_generation("greedy() tokens", side, P, params, config, prompt, got, N)


def _halve(logits, ids):
    """A user processor (the processor protocol: logits, ids -> logits), on NumPy and torch alike."""
    return logits * 0.5


# Each setting ends rows at tokens the model does generate: `_endings` reads them off a run of the
# same setting without eos and stop sequences (step 3 of the first row, step 6 of the last; a
# bigram and a token for the stop sequences), so every setting really stops rows.
SETTINGS = {
    "eos": (dict(max_new_tokens=14, pad_token_id=PAD), "eos"),
    "eos+min_new_tokens+repetition_penalty": (dict(max_new_tokens=14, pad_token_id=PAD, min_new_tokens=5,
                                                   repetition_penalty=1.6), "eos"),
    "stop sequence": (dict(max_new_tokens=14, pad_token_id=PAD), "stop"),
    "sampling": (dict(max_new_tokens=14, do_sample=True, top_k=10, temperature=0.8, pad_token_id=PAD,
                      num_return_sequences=2), "eos"),
}  # fmt: skip


def _endings(config, params, tokens, mask, kwargs, ending, u):
    probe = ref_llama.generate(params, config, tokens, generation_config=generation.GenerationConfig(**kwargs),
                               attention_mask=mask, u=u, processors=(_halve,))[:, tokens.shape[1] :]  # fmt: skip
    if ending == "eos":
        return dict(eos_token_id=sorted({int(probe[0, 3]), int(probe[-1, 6])}))
    return dict(stop_sequences=[[int(probe[1, 4]), int(probe[1, 5])], [int(probe[2, 8])]])


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", PADDED_CONFIGS)
def test_generate_padded_with_eos_and_processors(side, name, setting):
    """Left-padded prompts with eos / stop sequences / HF processors and a user processor: float64 gives
    the reference's tokens exactly (finished rows leave the batch and its cache); every backend holds
    pad after a row's end."""
    config, params = CONFIGS[name], padded_params(name)
    tokens, mask = layout("left")
    kwargs, ending = SETTINGS[setting]
    R = kwargs.get("num_return_sequences", 1)
    u = np.random.default_rng(5).random((len(ROWS) * R, 14)) if kwargs.get("do_sample") else None
    gen = generation.GenerationConfig(**kwargs, **_endings(config, params, tokens, mask, kwargs, ending, u))
    want = ref_llama.generate(params, config, tokens, generation_config=gen, attention_mask=mask, u=u,
                              processors=(_halve,))  # fmt: skip
    got = side.numpy(_model(side).generate(side.params(params), config, side.array(tokens), generation_config=gen,
                                           attention_mask=side.array(mask), u=u, processors=(_halve,)))  # fmt: skip
    T0 = tokens.shape[1]
    ended = [any(np.isin(want[b, T0 + k], gen.eos_token_id or ()) or
                 generation.ends_with(want[b : b + 1, : T0 + k + 1], gen.stop_sequences)[0]
                 for k in range(want.shape[1] - T0)) for b in range(want.shape[0])]  # fmt: skip
    assert 0 < sum(ended), "the case must end rows"
    if side.dtype == "float64":
        assert got.shape == want.shape and np.array_equal(got, want), f"{setting}: {got} != {want}"
    ends = gen.eos_token_id or ()
    for row in got[:, T0:]:
        hits = np.flatnonzero(np.isin(row, ends))
        if hits.size:
            assert np.all(row[hits[0] + 1 :] == PAD), f"a row holds pad after its eos: {row}"


def test_generate_refuses_beam_search(side):
    if side.is_cupy:
        pytest.skip("the reference runs beam search; fast.llama refuses it")
    config, params, prompt, _ = _prompt_and_steps("mqa-hd2", 59)
    with pytest.raises(ValueError, match="^generation_config.num_beams"):
        fast_llama.generate(side.params(params), config, side.array(prompt),
                            generation_config=generation.GenerationConfig(max_new_tokens=3, num_beams=2))  # fmt: skip


# ----------------------------------------------------------------------------- gradients


def _mean_nll(params, config, tokens):
    return -float(np.mean(ref_llama.log_prob(params, config, tokens))) / tokens.shape[1]


@functools.lru_cache(maxsize=None)
def _gradient_truth(name: str, T: int):
    """(coordinates, finite-difference gradient, its worst self-consistency) -- once per case."""
    config, params, tokens, _ = case(name, T)
    rng = np.random.default_rng(99)
    shapes = ref_llama.param_shapes(config)
    coords = [(n, tuple(int(rng.integers(0, s)) for s in shape)) for n, shape in shapes.items()]
    coords.append(("embed", (int(tokens[0, 3]), 0)))  # a used embedding row
    fd = [finite_difference_grad(lambda p: _mean_nll(p, config, tokens), params, n, i) for n, i in coords]
    return coords, np.array([d.value for d in fd]), max(d.error for d in fd)


@pytest.mark.parametrize("case_key", [("mqa-hd2", 23), ("gqa-hd4-w64", 23)], ids=_case_id)
def test_gradient_of_mean_nll(side, case_key):
    if side.is_cupy:
        pytest.skip("cupy-f64 runs the reference, which has no autograd: gradients are a torch-backend check")
    import torch

    config, params, tokens, _ = case(*case_key)
    coords, truth, fd_err = _gradient_truth(*case_key)
    print(f"[{side.name}] finite-difference self-consistency {fd_err:.2e}")
    assert fd_err <= FD_ACCURACY, f"the finite-difference truth moves by {fd_err:.2e} when h doubles"

    def autograd(attn_impl):
        P = {k: v.detach().clone().requires_grad_(True) for k, v in side.params(params).items()}
        loss = -fast_llama.log_prob(P, config, side.array(tokens), attn_impl=attn_impl).mean() / tokens.shape[1]
        loss.backward()
        return np.array([side.numpy(P[n].grad[i]) for n, i in coords], dtype=np.float64)

    got = autograd("sdpa")
    naive_grad = autograd("math") if side.low_precision else None
    assert np.abs(truth).max() > 1e-3, "the sampled gradient entries are all ~0: the test would prove nothing"
    with torch.no_grad():
        check("grad mean NLL", truth, got, side, naive=naive_grad)


# ----------------------------------------------------------------------------- the CPU inference kernels
#
# On the CPU, inference runs through fast.gpt's special kernels ("matvec" for one row, "matmul":
# oneDNN on transposed copies) only for models large enough to gain; the threshold is lowered to
# 0 here so the same comparisons run through them.


@pytest.fixture
def cpu_kernels(side, monkeypatch):
    import torch

    if side.is_cupy or side.backend.device != "cpu":
        pytest.skip("the special inference kernels are CPU-only")
    monkeypatch.setattr(fast_gpt, "_CPU_KERNELS_MIN_WEIGHTS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the matvec split needs more than one thread
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", ["mha-hd16-w7", "gqa-hd4-w64"])
def test_cpu_inference_kernels(side, cpu_kernels, name, batch):
    config, params, tokens, truth = case(name, 59)
    tokens, truth = tokens[:batch], truth[:batch]
    P = side.params(params)
    mode = fast_llama.kernel_mode(P, batch, differentiable=False)
    assert mode == ("matvec" if batch == 1 and side.dtype != "bfloat16" else "matmul"), mode
    low = naive(side, ref_llama.forward, forward, params, P, config, tokens)
    check(f"logits (CPU kernels, batch {batch})", truth, forward(side, P, config, tokens), side, naive=low)
    check(f"cache logits (CPU kernels, batch {batch})", truth, cached_logits(side, P, config, tokens, [5]), side,
          naive=low)  # fmt: skip
    prompt, N = tokens[:, :5], 55
    got = _generate(side, P, config, prompt, N)
    _check_generation(f"greedy tokens (CPU kernels, batch {batch})", side, P, params, config, prompt, got, N)
    u = np.random.default_rng(batch).random((batch, N))
    got = _generate(side, P, config, prompt, N, u=u)
    _check_generation(f"sampled tokens (CPU kernels, batch {batch})", side, P, params, config, prompt, got, N, u=u)


# ----------------------------------------------------------------------------- bad input


def _message(fn):
    try:
        fn()
    except (ValueError, TypeError) as error:
        return type(error), str(error)
    raise AssertionError("accepted what it should refuse")


def test_refuses_bad_input_as_the_reference(side):
    """The reference and the backend refuse the same inputs with the same exception and message."""
    config, params, tokens, _ = case("mha-hd16-w7", 59)
    m, P = _model(side), side.params(params)
    x, mask = tokens[:, :9], np.ones((BATCH, 9), dtype=np.int64)
    too_far = np.tile(np.arange(9), (BATCH, 1)) + config.max_position - 5  # positions beyond max_position
    missing = {k: v for k, v in params.items() if k != "norm.w"}
    misshaped = dict(params, **{"layers.1.attn.k.w": np.zeros((9, 33))})
    calls = {
        "mask of the wrong shape": lambda mod, p, a: mod.forward(p, config, a(x), a(np.ones((BATCH, 8), np.int64))),
        "mask of 2s": lambda mod, p, a: mod.forward(p, config, a(x), a(2 * mask)),
        "a row without a real token": lambda mod, p, a: mod.log_prob(p, config, a(x), a(0 * mask)),
        "position beyond max_position": lambda mod, p, a: mod.forward(p, config, a(x), None, a(too_far)),
        "negative position": lambda mod, p, a: mod.forward(p, config, a(x), None, a(-1 - too_far)),
        "token out of range": lambda mod, p, a: mod.forward(p, config, a(x + config.vocab_size)),
        "T beyond max_position": lambda mod, p, a: mod.forward(p, config, a(np.zeros((1, 114), np.int64))),
        "tokens of one axis": lambda mod, p, a: mod.forward(p, config, a(x[0])),
        "prompt too long for max_new_tokens": lambda mod, p, a: mod.generate(p, config, a(tokens), 60),
        "missing parameter": lambda mod, p, a: mod.forward(missing if mod is ref_llama else side.params(missing),
                                                           config, a(x)),
        "mis-shaped parameter": lambda mod, p, a: mod.forward(misshaped if mod is ref_llama
                                                              else side.params(misshaped), config, a(x)),
        "u of the wrong shape": lambda mod, p, a: mod.generate(p, config, a(x), 4, u=np.full((BATCH, 3), 0.5)),
        "cache batch": lambda mod, p, a: mod.prefill(p, config, mod.init_cache(p, config, 3), a(x)),
        "step tokens (B, 1)": lambda mod, p, a: mod.step(p, config, mod.init_cache(p, config, BATCH), a(x[:, :1])),
        "prefill past max_position": lambda mod, p, a: mod.prefill(p, config, mod.prefill(
            p, config, mod.init_cache(p, config, BATCH), a(np.zeros((BATCH, 110), np.int64)))[1], a(x)),
    }  # fmt: skip
    for what, call in calls.items():
        want = _message(lambda: call(ref_llama, params, np.asarray))
        got = _message(lambda: call(m, P, side.array))
        assert got == want, f"{what}: the backend raised {got}, the reference {want}"
    with pytest.raises(ValueError, match=re.escape("Config.n_kv_head: expected a divisor of n_head=6, got 4")):
        Config(vocab_size=5, max_position=8, n_layer=1, n_head=6, n_kv_head=4, n_embd=12, intermediate_size=4)


@pytest.mark.parametrize("name", ["mha-hd16-w7", "gqa-hd4-w64"])
def test_cpu_bfloat16_inference_kernels(monkeypatch, name):
    """bfloat16 on the CPU is no backend of the fixture (the bench runs it): its inference kernels
    -- on a CPU without oneDNN bfloat16, the linear layers on exact float32 copies of the weights
    ("float32-..." modes) -- judged by the bfloat16 rule against the plain bfloat16 computation
    (native bfloat16 matmuls, attn_impl="math": what differentiable params run)."""
    import torch

    from chainrule.fast import backend as fb
    from chainrule.reference.checks import assert_close, logits_through_cache

    monkeypatch.setattr(fast_gpt, "_CPU_KERNELS_MIN_WEIGHTS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config, params, tokens, truth = case(name, 59)
        P = fb.to_torch(params, "cpu", torch.bfloat16)
        upcast = not fast_gpt._onednn_usable(torch.bfloat16)
        modes = [fast_llama.kernel_mode(P, rows, False) for rows in (1, 2)]
        assert modes == (["float32-matvec", "float32-matmul"] if upcast else ["matmul", "matmul"]), modes
        plain = {k: v.clone().requires_grad_(True) for k, v in P.items()}
        naive_logits = fast_llama.forward(plain, config, torch.as_tensor(tokens), attn_impl="math").detach()
        for batch in (1, 2):
            x = torch.as_tensor(tokens[:batch])
            got = fast_llama.forward(P, config, x)
            print(assert_close(f"bf16 CPU logits (batch {batch})", truth[:batch], got, "bfloat16",
                               naive=naive_logits[:batch]))  # fmt: skip
            cached = logits_through_cache(fast_llama, P, config, x, [5])
            print(assert_close(f"bf16 CPU cache logits (batch {batch})", truth[:batch], cached, "bfloat16",
                               naive=naive_logits[:batch]))  # fmt: skip
            prompt, N = tokens[:batch, :5], 55
            out = fast_llama.generate(P, config, torch.as_tensor(prompt), N).numpy()
            print(assert_tokens(f"bf16 CPU greedy tokens (batch {batch})", prompt, out,
                                lambda s: ref_llama.forward(params, config, s), "bfloat16", max_new_tokens=N,
                                fast=lambda s: logits_through_cache(fast_llama, P, config, torch.as_tensor(s), [5])))
    finally:
        torch.set_num_threads(threads)
