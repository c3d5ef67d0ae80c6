"""reference.cost (the decoding cost model) against measurement.

The arithmetic is checked against things that count for themselves, never
against a second copy of the same formulas:
  * param_count       == the number of values reference.gpt.init returns
                         (and HF's GPT2LMHeadModel.num_parameters(), where installed);
  * decode_step_flops == torch.utils.flop_counter.FlopCounterMode's count of one
                         fast.gpt.step (matmul FLOPs at 2 per multiply-add);
  * kv_cache_bytes    == the bytes fast.gpt.init_cache actually allocates.

FlopCounterMode counts mm, addmm (the matmul only, not the bias add), bmm,
baddbmm and the CUDA SDPA kernels, but not two CPU kernels fast.gpt uses: the
fused attention (aten._scaled_dot_product_flash_attention_for_cpu) and oneDNN's
linear (mkldnn._linear_pointwise, float32/bfloat16 decoding). Both are taught
to it through `custom_mapping` with its own conventions: attention as Q K^T and
A V (2 * 2 * B nh Tq Tk hs), a linear as 2 * N * in * out. The count then
includes the attention over exactly as many keys as the kernel was handed -- a
step that attended over the whole preallocated cache instead of the filled
part would count more than the model says, and fail; a kernel the counter
still does not know would count less, and fail too.
Elementwise work (LayerNorm, softmax, GELU, biases) is counted by neither.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from chainrule.fast import backend as fb
from chainrule.fast import gpt as fast_gpt
from chainrule.reference import cost
from chainrule.reference import gpt as ref_gpt

CONFIGS = [
    ref_gpt.Config(vocab_size=59, block_size=23, n_layer=2, n_head=3, n_embd=33),
    ref_gpt.Config(vocab_size=113, block_size=31, n_layer=3, n_head=1, n_embd=7),
    ref_gpt.Config(vocab_size=3, block_size=5, n_layer=1, n_head=5, n_embd=5),
]
IDS = [f"V{c.vocab_size}-L{c.n_layer}-nh{c.n_head}-C{c.n_embd}" for c in CONFIGS]
# GPT2Config's options: an MLP of hidden size n_inner, an untied head (counted: it is a matrix of its own)
OPTIONS = ref_gpt.Config(vocab_size=59, block_size=23, n_layer=2, n_head=3, n_embd=33, n_inner=37, activation="relu",
                         tie_word_embeddings=False, scale_attn=False)  # fmt: skip


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q K^T and A V of a (B, nh, Tq, hs) x (B, nh, Tk, hs) attention, 2 FLOPs per multiply-add."""
    B, nh, Tq, hs = query_shape
    Tk, hv = key_shape[-2], value_shape[-1]
    return 2 * B * nh * Tq * Tk * hs + 2 * B * nh * Tq * Tk * hv


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """mkldnn._linear_pointwise: x (N, in) times W given (out, in), 2 FLOPs per multiply-add."""
    n = math.prod(x_shape[:-1])
    out_features, in_features = w_shape
    return 2 * n * in_features * out_features


def _flop_counter() -> FlopCounterMode:
    """FlopCounterMode, taught the two CPU kernels it does not know (same conventions as its own)."""
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _sdpa_flops
    onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if onednn_linear is not None:
        mapping[onednn_linear] = _onednn_linear_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("config", CONFIGS + [OPTIONS], ids=IDS + ["options"])
def test_param_count_is_the_size_of_init(config):
    params = ref_gpt.init(config, np.random.default_rng(0))
    assert cost.param_count(config) == sum(p.size for p in params.values())


def test_param_count_gpt2_small():
    """GPT-2 small: 124,439,808 parameters with the LM head tied (the published count)."""
    config = ref_gpt.Config(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    assert cost.param_count(config) == 124_439_808


@pytest.mark.parametrize("config", [CONFIGS[0], OPTIONS], ids=["tied", "options"])
def test_param_count_matches_hf(config):
    transformers = pytest.importorskip("transformers")
    _, hf_config = ref_gpt.to_hf_gpt2(ref_gpt.init(config, np.random.default_rng(0)), config)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config))
    assert cost.param_count(config) == model.num_parameters()  # a tied head counted once


# ----------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS + [OPTIONS], ids=IDS + ["options"])
def test_decode_step_flops_match_the_flop_counter(config, dtype):
    params = fb.to_torch(ref_gpt.init(config, np.random.default_rng(1)), device="cpu", dtype=dtype)
    rng = np.random.default_rng(2)
    for batch, prompt_len in ((1, 1), (3, config.block_size // 2), (2, config.block_size - 1)):
        prompt = torch.as_tensor(rng.integers(0, config.vocab_size, (batch, prompt_len)))
        token = torch.as_tensor(rng.integers(0, config.vocab_size, (batch,)))
        with torch.inference_mode():
            cache = fast_gpt.init_cache(params, config, batch)
            _, cache = fast_gpt.prefill(params, config, cache, prompt)
            counter = _flop_counter()
            with counter:
                fast_gpt.step(params, config, cache, token)
        counted = counter.get_total_flops()
        expected = cost.decode_step_flops(config, prompt_len + 1, batch)
        assert counted == expected, (
            f"batch {batch}, context {prompt_len + 1}: FlopCounterMode counted {counted} FLOPs, "
            f"the cost model says {expected}; by op: {dict(counter.get_flop_counts().get('Global', {}))}"
        )


def test_decode_step_flops_gpt2_small_by_hand():
    """The closed form on GPT-2 small at context 1024: 2 * (124M - wpe - LN) + attention."""
    config = ref_gpt.Config(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    C, L, V, n = 768, 12, 50257, 1024
    matmul_weights = L * (3 * C * C + C * C + 4 * C * C + 4 * C * C) + V * C  # multiply-adds per token
    assert cost.decode_step_flops(config, n) == 2 * matmul_weights + L * 2 * 2 * n * C


# ----------------------------------------------------------------------------- KV cache bytes


def _allocated_float_bytes(obj, seen=None) -> int:
    """Bytes of the floating-point tensor storages reachable from obj (each storage once)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if not obj.is_floating_point() or storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_allocated_float_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_allocated_float_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
        fields = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                fields[name] = getattr(obj, name)
        return _allocated_float_bytes(fields, seen)
    return 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_kv_cache_bytes_match_allocation(config, dtype):
    params = fb.to_torch(ref_gpt.init(config, np.random.default_rng(3)), device="cpu", dtype=dtype)
    for batch, max_len in ((1, 1), (3, config.block_size), (2, max(1, config.block_size // 3))):
        cache = fast_gpt.init_cache(params, config, batch, max_len=max_len)
        allocated = _allocated_float_bytes(cache)
        expected = cost.kv_cache_bytes(batch, max_len, config.n_layer, config.n_head, config.head_dim,
                                       str(dtype).removeprefix("torch."))  # fmt: skip
        assert allocated == expected, f"batch {batch}, max_len {max_len}: allocated {allocated}, model {expected}"
        assert cost.config_kv_cache_bytes(config, batch, max_len, dtype) == expected


# ----------------------------------------------------------------------------- rooflines and errors


def test_roofline_is_bandwidth_over_bytes():
    assert cost.roofline_tokens_per_s(1e9, 1e10, batch=4) == pytest.approx(40.0)
    # compute roof: 1e9 FLOPs at 1e11 FLOP/s takes 10 ms > 1e9 B at 1e12 B/s (1 ms)
    assert cost.roofline_tokens_per_s(1e9, 1e12, 1, flops_per_step=1e9, peak_flops_per_s=1e11) == pytest.approx(100.0)


def test_crossover_batch_is_where_the_roofs_meet():
    config = CONFIGS[0]
    bw, peak = 2e10, 1e11
    b = cost.crossover_batch(config, 11, bw, peak, dtype=4)
    assert math.isfinite(b) and b > 0

    def step_times(batch):
        return (cost.decode_step_flops(config, 11, batch) / peak, cost.decode_step_bytes(config, 11, batch, 4) / bw)

    compute, memory = step_times(math.ceil(b))
    assert compute >= memory
    if math.floor(b) >= 1 and math.floor(b) < b:
        compute, memory = step_times(math.floor(b))
        assert compute < memory
    # a machine whose balance exceeds the KV cache's own intensity is never compute bound
    assert cost.crossover_batch(config, 11, 1e9, 1e15) == math.inf


@pytest.mark.parametrize(
    "call",
    [
        lambda: cost.kv_cache_bytes(0, 5, 1, 1, 1, 4),
        lambda: cost.kv_cache_bytes(1, 5, 1, 1, 1, "int7"),
        lambda: cost.decode_step_flops(CONFIGS[0], 0),
        lambda: cost.decode_step_flops(CONFIGS[0], CONFIGS[0].block_size + 1),
        lambda: cost.roofline_tokens_per_s(1e9, 0.0),
        lambda: cost.roofline_tokens_per_s(1e9, 1e9, 1, flops_per_step=1e9),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
