"""`chainrule bench llama --quick`: the topic runs, races fast.llama against HF, writes its JSON
with a roofline per case; and the roofline's byte count is the arithmetic its docstring states."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chainrule.bench import llama as bench_llama
from chainrule.reference import llama
from tests.test_cli import chainrule


def test_bench_llama_quick_writes_json(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "llama.json"
    r = chainrule("bench", "llama", "--quick", "--repeats", "1", "--warmup", "0", "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "roofline" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["topic"] == "llama" and doc["quick"] is True
    names = {t["name"] for t in doc["timings"]}
    assert names == {"fast.llama.generate", "HF LlamaForCausalLM.generate"}
    for t in doc["timings"]:
        assert len(t["seconds"]) == 1 and t["median_s"] > 0
    results = doc["notes"]["results"]
    assert [(r["dtype"], r["batch"]) for r in results] == [("float32", 1), ("float32", 3), ("bfloat16", 1),
                                                           ("bfloat16", 3)]  # fmt: skip
    assert all(r["roofline_tokens_per_s"] > 0 and r["fast_over_hf_min"] > 0 for r in results)
    assert all(r["token_agreement"] == 1.0 for r in results if r["dtype"] == "float32")


def test_generate_bytes_arithmetic():
    """Tied 2-layer model: weights read once for the prefill and once per later step, plus the cache."""
    config = llama.Config(vocab_size=10, max_position=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=8,
                          intermediate_size=6, tie_word_embeddings=True)  # fmt: skip
    n_params = 10 * 8 + 2 * (8 + 8 * 8 + 2 * 8 * 4 + 8 * 8 + 8 + 3 * 8 * 6) + 8
    W = (n_params + 8) * 4
    assert bench_llama.weight_bytes_per_step(config, 4) == W
    kv = 2 * 2 * 2 * 2 * 4  # 2 (k, v) * L * n_kv * hd * bytes
    assert bench_llama.kv_bytes_per_position(config, 4) == kv
    assert bench_llama.generate_bytes(config, 5, 3, 2, 4) == W + (W + 2 * 6 * kv) + (W + 2 * 7 * kv)
    untied = dataclasses.replace(config, tie_word_embeddings=False)
    assert bench_llama.weight_bytes_per_step(untied, 4) == W  # lm_head read, the table's rows only
