"""`chainrule check PATH` and `chainrule export RUN --to hf DIR`, in process (no network: HF models
are built from a GPT2Config with random weights and saved with save_pretrained).

- a HF GPT-2 with random weights passes every check in float32 (exit 0), and the JSON says so;
- a model under test with a future-token leak (or one layer's output scaled) fails loudly (exit 1):
  the logits line and, for the leak, the causality line, each naming the worst offender;
- a `chainrule train gpt` run passes, and its export loads in transformers with the same logits;
- usage and load errors exit 2 with a message naming the path, the option or the family;
- reference.gpt.from_hf_gpt2 on a custom-vocabulary GPT-2 (vocab 100): bos_token from the config when
  it fits, from bos_token= when given, else a ValueError saying to pass bos_token=.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from chainrule import app, check, cli
from chainrule.reference import gpt as ref_gpt
from chainrule.reference.checks import assert_close, naive_float32
from diff_tests.peers.hf_weights import perturb_gpt2

HAS_HF = importlib.util.find_spec("transformers") is not None
needs_hf = pytest.mark.skipif(not HAS_HF, reason="HF transformers is not installed (pip install 'chainrule[hf]')")

HF_SIZES = dict(vocab_size=100, n_positions=40, n_embd=24, n_layer=2, n_head=3)  # GPT2Config's bos_token_id: 50256
TINY_GPT = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 24, "batch_size": 4}


def run(capsys, *args):
    """`chainrule ARGS` in process -> (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def result_lines(out: str) -> dict:
    """check name -> its result line."""
    names = ("logits", "log-likelihood", "causality", "kv-cache", "greedy", "padding")
    lines = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0] in ("pass", "FAIL", "n/a") and parts[1] in names:
            lines[parts[1]] = line
    assert set(lines) == set(names), out
    return lines


def save_hf_gpt2(path, seed=0, **overrides):
    import torch
    import transformers

    torch.manual_seed(seed)
    model = perturb_gpt2(transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**HF_SIZES, **overrides})), seed)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    if not HAS_HF:
        pytest.skip("HF transformers is not installed (pip install 'chainrule[hf]')")
    return save_hf_gpt2(tmp_path_factory.mktemp("hf") / "gpt2")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "gpt"
    app.train_run("gpt", None, TINY_GPT, steps=2, out=out, progress=False, n_train=20_000, n_val=2_000)
    return out


# ----------------------------------------------------------------------------- check passes


@needs_hf
def test_check_passes_on_a_hf_gpt2_with_random_weights(hf_dir, tmp_path, capsys):
    report = tmp_path / "check.json"
    code, out, err = run(capsys, "check", hf_dir, "--json", report)
    assert code == 0, out + err
    lines = result_lines(out)
    for name, line in lines.items():
        assert line.startswith("pass "), line
    # padded batches as HF's generate runs them pass; the forward given the mask alone is caught
    assert "rows alone vs padded" in lines["padding"] and "without position_ids: off by" in lines["padding"]
    assert "worst (" in lines["logits"] and " ref " in lines["logits"] and " model " in lines["logits"]
    assert "bit-identical" in lines["causality"]
    assert "hf-gpt2" in out and "float32 on cpu" in out
    assert "bos_token_id 50256 is outside the vocabulary" in out  # GPT2Config's default, noted
    assert all(len(line) <= check.WIDTH for line in out.splitlines()), out

    doc = json.loads(report.read_text())
    assert doc["passed"] is True and doc["family"] == "hf-gpt2" and doc["dtype"] == "float32"
    assert doc["tolerance"] == {"rtol": 1e-5, "atol": 1e-5, "k": 3.0}
    by_name = {r["check"]: r for r in doc["results"]}
    assert list(by_name) == ["logits", "log-likelihood", "causality", "kv-cache", "greedy", "padding"]
    assert [r["status"] for r in doc["results"]] == ["pass"] * 6
    logits = by_name["logits"]
    assert len(logits["worst_index"]) == 3 and 0 < logits["max_err"] <= logits["bound"]
    assert logits["naive_err"] > 0 and "naive error" in logits["rule"]
    assert abs(logits["reference_value"]) > 0 and logits["model_value"] == pytest.approx(logits["reference_value"],
                                                                                         abs=logits["bound"])
    assert by_name["greedy"]["info"]["judged"] == by_name["greedy"]["info"]["total"] == 33
    assert by_name["kv-cache"]["info"]["max |cached - recompute|"] < 1e-4


@needs_hf
def test_check_in_float64_holds_the_model_to_1e_10(hf_dir, capsys):
    code, out, err = run(capsys, "check", hf_dir, "--dtype", "float64", "--bos-token", "7")
    assert code == 0, out + err
    assert "atol" not in out and "<= 1e-10 + 1e-10 x |ref|" in out
    assert "bos_token_id" not in out  # --bos-token given: no note


@needs_hf
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_passes_on_a_hf_gpt2_with_gpt2config_options(tmp_path, capsys, dtype):
    """An untied LM head, ReLU, n_inner 37, unscaled scores divided by layer + 1: the directory loads
    (reference.gpt implements these options of GPT2Config), every check passes, and a note names them."""
    import transformers
    from safetensors import safe_open

    path = save_hf_gpt2(tmp_path / "gpt2", 1, tie_word_embeddings=False, activation_function="relu", n_inner=37,
                        scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True)  # fmt: skip
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" in f.keys()  # saved untied
    assert transformers.GPT2Config.from_pretrained(str(path)).tie_word_embeddings is False
    code, out, err = run(capsys, "check", path, "--dtype", dtype, "--bos-token", "0")
    assert code == 0, out + err
    for name, line in result_lines(out).items():
        assert line.startswith("pass "), line
    assert "note: GPT-2 options: relu, n_inner 37, no 1/sqrt(hs), scores / (layer + 1), untied LM head\n" in out
    assert all(len(line) <= check.WIDTH for line in out.splitlines()), out


# ----------------------------------------------------------------------------- check fails loudly


def _leak(model):
    """The first block's output at position t gets 0.1 x its output at t + 1: a future-token leak
    (in one-token cache steps there is no t + 1, so the cache path alone stays right)."""

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        leaked = h.clone()
        leaked[:, :-1] += 0.1 * h[:, 1:]
        return (leaked, *output[1:]) if isinstance(output, tuple) else leaked

    model.transformer.h[0].register_forward_hook(hook)
    return model


def _scale(model):
    """The last block's MLP output scaled by 1.01 in the model under test only."""
    model.transformer.h[-1].mlp.register_forward_hook(lambda module, args, output: 1.01 * output)
    return model


@needs_hf
@pytest.mark.parametrize("bug,failing,passing", [
    (_leak, {"logits", "log-likelihood", "causality"}, set()),
    (_scale, {"logits", "log-likelihood", "kv-cache"}, {"causality"}),
])  # fmt: skip
def test_check_fails_loudly_on_a_broken_model(hf_dir, tmp_path, capsys, monkeypatch, bug, failing, passing):
    """A family registered beside hf-gpt2 (detected by nothing: chosen with --family) loads the same
    directory through hf-gpt2's loader, with a bug put into the model under test only."""
    from chainrule.families import gpt2 as family_gpt2

    def load(path, **kwargs):
        return family_gpt2.load_hf(path, patch=bug, **kwargs)

    check.load_families()
    monkeypatch.setitem(check.FAMILIES, "broken-gpt2", check.Family("broken-gpt2", "test", lambda p: False, load))
    report = tmp_path / "broken.json"
    code, out, err = run(capsys, "check", hf_dir, "--family", "broken-gpt2", "--json", report)
    assert code == 1, out + err
    lines = result_lines(out)
    for name in failing:
        assert lines[name].startswith("FAIL "), lines[name]
    for name in passing:
        assert lines[name].startswith("pass "), lines[name]
    assert "FAILED" in out.splitlines()[-1]
    assert all(len(line) <= check.WIDTH for line in out.splitlines()), out
    # the worst offender: index, reference value, model value, error past its bound
    logits = lines["logits"]
    assert "worst (" in logits and " ref " in logits and " model " in logits and " > " in logits, logits
    doc = json.loads(report.read_text())
    by_name = {r["check"]: r for r in doc["results"]}
    assert doc["passed"] is False
    assert by_name["logits"]["max_err"] > by_name["logits"]["bound"] > 0
    if bug is _leak:
        causal = by_name["causality"]
        t = causal["worst_index"][1]
        assert "moved" in lines["causality"] and "tokens >= " in lines["causality"], lines["causality"]
        start = int(lines["causality"].split("tokens >= ")[1].split()[0])
        assert t < start  # an earlier logit moved when only later tokens changed
        assert causal["reference_value"] != causal["model_value"]
        assert "is not causal" in causal["info"]["message"]


# ----------------------------------------------------------------------------- chainrule runs and export


def test_check_passes_on_a_chainrule_run(run_dir, tmp_path, capsys):
    report = tmp_path / "run.json"
    code, out, err = run(capsys, "check", run_dir, "--json", report)
    assert code == 0, out + err
    lines = result_lines(out)
    assert all(lines[n].startswith("pass ") for n in ("logits", "log-likelihood", "causality", "kv-cache", "greedy"))
    assert "chainrule-gpt" in out and "fast.gpt" in out
    doc = json.loads(report.read_text())
    assert doc["family"] == "chainrule-gpt" and doc["passed"] is True
    code, out, err = run(capsys, "check", run_dir, "--dtype", "bfloat16")
    assert code in (0, 1) and "bfloat16" in out and "unfused attention" in out  # the bfloat16 naive baseline
    assert result_lines(out)["causality"].startswith("pass ")  # exact in every dtype
    code, out, err = run(capsys, "check", run_dir, "--dtype", "float16")
    assert code == 2 and "fast.gpt runs in float64, float32 or bfloat16" in err


@needs_hf
def test_export_loads_in_transformers_with_the_same_logits(run_dir, tmp_path, capsys):
    import torch
    import transformers

    from chainrule.fast.train import load_checkpoint

    out_dir = tmp_path / "hf"
    code, out, err = run(capsys, "export", run_dir, "--to", "hf", out_dir)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float64,
                                                                    output_loading_info=True)  # fmt: skip
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tensors, meta = load_checkpoint(run_dir)
    params = {k: v.double().numpy() for k, v in tensors.items()}
    config = ref_gpt.Config(**meta["config"])
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(3, config.block_size))
    with torch.no_grad():
        got = model.eval()(torch.from_numpy(tokens)).logits
    c = assert_close("exported logits", ref_gpt.forward(params, config, tokens), got, "float64")
    assert c.max_err < 1e-10, str(c)
    assert model.generation_config.bos_token_id == config.bos_token

    code, out, err = run(capsys, "check", out_dir)  # the export is an hf-gpt2 directory that passes
    assert code == 0, out + err
    assert "hf-gpt2" in out

    code, out, err = run(capsys, "export", run_dir, "--to", "hf", out_dir)
    assert code == 2 and "is not empty; pass --force" in err
    code, out, err = run(capsys, "export", run_dir, "--to", "hf", out_dir, "--force")
    assert code == 0, err
    code, out, err = run(capsys, "export", run_dir, "--to", "onnx", tmp_path / "x")
    assert code == 2 and "unknown format 'onnx'; known formats: hf" in err
    code, out, err = run(capsys, "export", out_dir, "--to", "hf", tmp_path / "y")
    assert code == 2 and "family 'hf-gpt2' has no exporter to 'hf'" in err and "chainrule-gpt" in err


@needs_hf
def test_export_of_a_run_with_gpt2config_options(tmp_path, capsys):
    """A run trained with an untied head, ReLU and n_inner 37 exports lm_head.weight and those
    options: transformers loads it (no missing or unexpected key) with the run's logits."""
    import torch
    import transformers

    from chainrule.fast.train import load_checkpoint

    settings = TINY_GPT | {"tie_word_embeddings": False, "activation": "relu", "n_inner": 37, "scale_attn": False}
    run_dir = tmp_path / "run"
    app.train_run("gpt", None, settings, steps=1, out=run_dir, progress=False, n_train=20_000, n_val=2_000)
    code, out, err = run(capsys, "export", run_dir, "--to", "hf", tmp_path / "hf")
    assert code == 0, err
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float64,
                                                                    output_loading_info=True)  # fmt: skip
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    hf = model.config
    assert (hf.activation_function, hf.n_inner, hf.scale_attn_weights) == ("relu", 37, False)
    assert hf.tie_word_embeddings is False
    tensors, meta = load_checkpoint(run_dir)
    params = {k: v.double().numpy() for k, v in tensors.items()}
    config = ref_gpt.Config(**meta["config"])
    assert "lm_head.w" in params and config.tie_word_embeddings is False
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, config.block_size))
    with torch.no_grad():
        got = model.eval()(torch.from_numpy(tokens)).logits
    c = assert_close("exported logits", ref_gpt.forward(params, config, tokens), got, "float64")
    assert c.max_err < 1e-10, str(c)


def test_export_refuses_an_unknown_family(tmp_path, capsys):
    run_dir = tmp_path / "pixelcnn"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"format": "chainrule-run", "model": "pixelcnn"}))
    code, out, err = run(capsys, "export", run_dir, "--to", "hf", tmp_path / "out")
    assert code == 2
    assert "no known model family recognizes" in err and "run.json has model 'pixelcnn'" in err
    assert "known families: hf-gpt2" in err and "chainrule-gpt" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- usage and load errors


def test_check_errors_exit_2_and_name_the_problem(tmp_path, capsys):
    def error(*args):
        code, out, err = run(capsys, "check", *args)
        assert code == 2, (args, out, err)
        assert err.startswith("chainrule check: error: "), err
        return err

    assert "does not exist" in error(tmp_path / "nowhere")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "t5"}))  # a family chainrule does not check
    msg = error(llama)
    assert "no known model family recognizes" in msg and "model_type 't5'" in msg
    assert "hf-gpt2" in msg and "chainrule-gpt" in msg
    assert "unknown family 'nope'; known families: hf-gpt2" in error(llama, "--family", "nope")
    assert "expected a model directory" in error(llama / "config.json")
    assert "--json: folder" in error(llama, "--json", tmp_path / "no" / "r.json")
    import torch

    if not torch.cuda.is_available():
        assert "--device cuda: CUDA is not available here" in error(llama, "--device", "cuda")
    code, out, err = run(capsys, "export", tmp_path / "nowhere", "--to", "hf", tmp_path / "out")
    assert code == 2 and "chainrule export: error: RUN: " in err and "does not exist" in err


@needs_hf
def test_check_never_unpickles(tmp_path, capsys):
    """A directory with pytorch_model.bin but no safetensors: refused, and the file is never opened
    (it is not even a pickle here)."""
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", **HF_SIZES}))
    (d / "pytorch_model.bin").write_bytes(b"not a pickle: must never be read")
    code, out, err = run(capsys, "check", d)
    assert code == 2
    assert "no model.safetensors" in err and "pytorch_model.bin" in err and "never unpickles" in err
    (d / "pytorch_model.bin").unlink()
    code, out, err = run(capsys, "check", d)
    assert code == 2 and "no model.safetensors (nor model.safetensors.index.json)" in err


def test_check_without_transformers_says_what_to_install(tmp_path, capsys, monkeypatch):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", **HF_SIZES}))
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    code, out, err = run(capsys, "check", d)
    assert code == 2
    assert err == "chainrule check: error: reading a HF directory needs transformers: pip install 'chainrule[hf]'\n"


def test_check_list_names_the_families(capsys):
    code, out, err = run(capsys, "check", "--list")
    assert code == 0
    assert out.startswith("hf-gpt2 ") and "chainrule-gpt" in out and "[export to hf]" in out


# ----------------------------------------------------------------------------- HF -> chainrule: bos_token


@needs_hf
def test_from_hf_gpt2_on_a_custom_vocabulary_gpt2():
    """GPT2Config keeps GPT-2's bos_token_id 50256 whatever the vocabulary: the README example used to
    fail with `Config.bos_token: expected an int in [0, 100), got 50256`."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = perturb_gpt2(transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_SIZES)), 0).eval()
    state, hf_config = model.state_dict(), model.config.to_dict()
    assert hf_config["bos_token_id"] == 50256
    with pytest.raises(ValueError, match=r"bos_token: hf_config has bos_token_id=50256, outside the vocabulary "
                                         r"\[0, 100\); pass bos_token="):  # fmt: skip
        ref_gpt.from_hf_gpt2(state, hf_config)
    with pytest.raises(ValueError, match=r"bos_token: expected an int in \[0, 100\)"):
        ref_gpt.from_hf_gpt2(state, hf_config, bos_token=100)
    with pytest.raises(ValueError, match="pass bos_token="):
        ref_gpt.from_hf_gpt2(state, hf_config | {"bos_token_id": None})
    assert ref_gpt.from_hf_gpt2(state, hf_config | {"bos_token_id": 7})[1].bos_token == 7
    params, config = ref_gpt.from_hf_gpt2(state, hf_config, bos_token=3)
    assert config.bos_token == 3 and config.vocab_size == 100

    # the README's example, with bos_token= as its error message says
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 33))
    truth = ref_gpt.forward(params, config, tokens)
    naive = naive_float32(ref_gpt.forward, params, config, tokens)
    with torch.no_grad():
        yours = model(torch.from_numpy(tokens)).logits
    assert assert_close("logits", truth, yours, "float32", naive=naive).passed


@needs_hf
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_padding_row_in_half_precision_is_judged_against_the_models_own_error(hf_dir, capsys, dtype):
    """In half precision padded and unpadded rows may round differently: the padding row allows k x the
    model's own error against the float64 reference (the elementwise table alone would fail a sound model)."""
    code, out, err = run(capsys, "check", hf_dir, "--dtype", dtype)
    line = result_lines(out)["padding"]
    assert line.startswith("pass "), out + err
