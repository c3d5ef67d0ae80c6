"""`chainrule check DIR` on HF Llama, Mistral and Qwen2 directories (the hf-llama family), in process
(no network: tiny models built from HF configs, weights moved far from the init, save_pretrained).

- Llama (GQA, untied), Mistral (a sliding window of 4 over 2 layers: shorter than the 31 tokens
  checked) and Qwen2 (q/k/v biases, MQA, tied head, no bos_token_id) pass every check in float32,
  padding included, with exit status 0; the JSON says so;
- in float64 the note on transformers' float32 RMSNorm and RoPE is printed, and the logits line
  fails by ~1e-6 (not more) while causality, greedy and padding pass;
- a model under test with one layer's MLP scaled fails the logits, log-likelihood and kv-cache lines;
- an option the spec does not implement is a usage error (exit 2) naming it, read from config.json
  before any weight.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from chainrule import check, cli

HAS_HF = importlib.util.find_spec("transformers") is not None
pytestmark = pytest.mark.skipif(not HAS_HF, reason="HF transformers is not installed (pip install 'chainrule[hf]')")

SIZES = dict(vocab_size=100, hidden_size=32, intermediate_size=45, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=40, rms_norm_eps=1e-5)  # fmt: skip
MODELS = {  # name: (model_type, HF config overrides, the transformers class)
    "llama": ("llama", dict(num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
              "LlamaForCausalLM"),
    "mistral": ("mistral", dict(num_key_value_heads=2, sliding_window=4), "MistralForCausalLM"),
    "qwen2": ("qwen2", dict(num_key_value_heads=1, tie_word_embeddings=True), "Qwen2ForCausalLM"),
}
NAMES = ("logits", "log-likelihood", "causality", "kv-cache", "greedy", "padding")


def run(capsys, *args):
    """`chainrule ARGS` in process -> (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def result_lines(out: str) -> dict:
    lines = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0] in ("pass", "FAIL", "n/a") and parts[1] in NAMES:
            lines[parts[1]] = line
    assert set(lines) == set(NAMES), out
    return lines


def save(path, model_type, overrides, seed=0):
    import torch
    import transformers

    from diff_tests.peers.test_hf_llama import perturb

    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(model_type, **{**SIZES, **overrides})
    model = perturb(transformers.AutoModelForCausalLM.from_config(config), seed)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-llama")
    return {name: save(root / name, model_type, overrides) for name, (model_type, overrides, _) in MODELS.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_check_passes_on_a_hf_directory(dirs, tmp_path, capsys, name):
    report = tmp_path / "check.json"
    code, out, err = run(capsys, "check", dirs[name], "--json", report)
    assert code == 0, out + err
    for line in result_lines(out).values():
        assert line.startswith("pass "), line
    assert "family hf-llama" in out and MODELS[name][2] in out and "float32 on cpu" in out
    assert "the reference itself in float32 NumPy" in out
    padding = result_lines(out)["padding"]
    assert "rows alone vs padded" in padding and "without position_ids too" in padding  # RoPE: relative
    assert all(len(line) <= check.WIDTH for line in out.splitlines()), out
    if name == "mistral":
        assert " W4" in out
    if name == "qwen2":  # Qwen2Config has no bos_token_id: noted, bos 0
        assert "bos_token_id None is outside the vocabulary" in out

    doc = json.loads(report.read_text())
    assert doc["passed"] is True and doc["family"] == "hf-llama" and doc["dtype"] == "float32"
    assert doc["reference"] == "chainrule.reference.llama"
    by_name = {r["check"]: r for r in doc["results"]}
    assert list(by_name) == list(NAMES) and all(r["status"] == "pass" for r in doc["results"])
    assert 0 < by_name["logits"]["max_err"] <= by_name["logits"]["bound"] and by_name["logits"]["naive_err"] > 0
    assert by_name["greedy"]["info"]["total"] == 33 and by_name["greedy"]["info"]["mismatches"] == 0
    assert by_name["padding"]["max_err"] <= 1e-5


def test_check_in_float64_notes_hf_float32_internals(dirs, capsys):
    code, out, err = run(capsys, "check", dirs["mistral"], "--dtype", "float64")
    lines = result_lines(out)
    assert "note: transformers runs RMSNorm and RoPE in float32 even in float64" in out
    assert code == 1 and lines["logits"].startswith("FAIL ")
    err = float(lines["logits"].split(" err ")[1].split()[0])
    assert 1e-9 < err < 1e-4, lines["logits"]  # float32 internals, not a wrong model
    for name in ("causality", "greedy", "padding"):
        assert lines[name].startswith("pass "), lines[name]


def test_check_fails_loudly_on_a_broken_model(dirs, capsys, monkeypatch):
    """hf-llama's loader with the last layer's MLP output scaled by 1.01 in the model under test only."""
    from chainrule.families import llama as family

    def bug(model):
        model.model.layers[-1].mlp.register_forward_hook(lambda module, args, output: 1.01 * output)
        return model

    check.load_families()
    monkeypatch.setitem(check.FAMILIES, "broken-llama", check.Family(
        "broken-llama", "test", lambda p: False, lambda path, **kw: family.load(path, patch=bug, **kw)))  # fmt: skip
    code, out, err = run(capsys, "check", dirs["llama"], "--family", "broken-llama")
    assert code == 1, out + err
    lines = result_lines(out)
    for name in ("logits", "log-likelihood", "kv-cache"):
        assert lines[name].startswith("FAIL ") and " > " in lines[name], lines[name]
    assert lines["causality"].startswith("pass ")


REFUSED = [  # (model, config.json key, value, what the error must name)
    ("llama", "attention_bias", True, "attention_bias"),
    ("llama", "mlp_bias", True, "mlp_bias"),
    ("llama", "hidden_act", "gelu", "hidden_act"),
    ("llama", "pretraining_tp", 2, "pretraining_tp"),
    ("llama", "rope_parameters", {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}, "yarn"),
    ("qwen2", "use_sliding_window", True, "use_sliding_window"),
]


@pytest.mark.parametrize("name,key,value,named", REFUSED, ids=[r[1] for r in REFUSED])
def test_unsupported_option_is_a_usage_error_naming_it(dirs, tmp_path, capsys, name, key, value, named):
    d = tmp_path / name
    shutil.copytree(dirs[name], d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {key: value}))
    code, out, err = run(capsys, "check", d)
    assert code == 2, out + err
    assert err.startswith("chainrule check: error: PATH: ") and "config.json" in err and named in err, err


def test_list_names_the_family(capsys):
    code, out, err = run(capsys, "check", "--list")
    assert code == 0 and "hf-llama" in out and "'mistral'" in out
