"""GPT-2 for `chainrule check` and `chainrule export` (chainrule.check's registry): two families.

    hf-gpt2        a HF transformers GPT-2 directory: config.json with model_type "gpt2", and the
                   weights as model.safetensors (or the shards model.safetensors.index.json lists).
                   The model under test is transformers' GPT2LMHeadModel loaded from the directory in
                   the dtype and on the device asked for; the reference is reference.gpt on the same
                   weights (reference.gpt.from_hf_gpt2). Safetensors only: a pytorch_model.bin is a
                   pickle, and chainrule never unpickles.
    chainrule-gpt  a run of `chainrule train gpt` (run.json, checkpoint.json, model.safetensors), or a
                   bare fast.train checkpoint of model "gpt". The model under test is fast.gpt; `export
                   --to hf` writes a directory transformers loads as GPT2LMHeadModel.

The naive same-dtype baseline (chainrule.check.naive_numpy): float32 and float16 run the reference
itself in that NumPy dtype; bfloat16, which NumPy lacks, runs fast.gpt's unfused attention
(attn_impl="math") in bfloat16 on the model's device, as the difference tests do.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from chainrule import check as C
from chainrule.reference import checks
from chainrule.reference import gpt as ref_gpt
from chainrule.families.hf import (hf_bos, hf_functions, import_transformers, json_field, naive_baseline,
                                   quiet_transformers, read_json, torch_dtype, weight_files)



def _describe(config) -> str:
    return f"L{config.n_layer} H{config.n_head} C{config.n_embd} V{config.vocab_size} T{config.block_size}"


def options_note(config) -> str | None:
    """The GPT2Config options of `config` that are not GPT-2's, in one line (None when there are none)."""
    options = []
    if config.activation != "gelu_tanh":
        options.append(config.activation)
    if config.n_inner is not None and config.n_inner != 4 * config.n_embd:
        options.append(f"n_inner {config.n_inner}")
    if not config.scale_attn:
        options.append("no 1/sqrt(hs)")
    if config.scale_attn_by_inverse_layer_idx:
        options.append("scores / (layer + 1)")
    if not config.tie_word_embeddings:
        options.append("untied LM head")
    return "GPT-2 options: " + ", ".join(options) if options else None



# ----------------------------------------------------------------------------- hf-gpt2


def detect_hf(path: Path) -> bool:
    return json_field(path / "config.json", "model_type") == "gpt2"


def load_hf(path: Path, *, dtype: str | None, device: str, bos_token: int | None, patch=None) -> C.Subject:
    """The Subject of a HF GPT-2 directory: GPT2LMHeadModel from it (in `dtype`, default the
    config's, on `device`) under test; reference.gpt on the safetensors weights. patch: a function
    model -> model applied to the loaded model before the checks (a family built on this one uses
    it to put its own kernels, or a deliberate bug, into the model under test)."""
    transformers = import_transformers()
    import torch
    from safetensors.torch import load_file

    raw = read_json(path / "config.json")
    files = weight_files(path)
    if dtype is None:
        saved = raw.get("dtype", raw.get("torch_dtype"))
        dtype = saved if saved in C.DTYPES else "float32"
    with quiet_transformers(transformers):
        hf_config = transformers.GPT2Config.from_pretrained(str(path)).to_dict()
    notes = []
    bos = hf_bos(hf_config, bos_token, notes)
    state = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as error:  # a corrupt or truncated file: name it
            raise C.CheckError(f"PATH: {file} is not a readable safetensors file ({error})") from None
    params, config = ref_gpt.from_hf_gpt2(state, hf_config, bos_token=bos)
    del state
    if options_note(config):
        notes.append(options_note(config))
    major = int(transformers.__version__.split(".")[0])
    kw = {"dtype": torch_dtype(dtype)} if major >= 5 else {"torch_dtype": torch_dtype(dtype)}
    with quiet_transformers(transformers):
        model = transformers.GPT2LMHeadModel.from_pretrained(str(path), use_safetensors=True, local_files_only=True,
                                                             **kw)  # fmt: skip
    model = model.to(device).eval()
    if patch is not None:
        model = patch(model)
    got = next(model.parameters()).dtype
    if got != torch_dtype(dtype):
        raise C.CheckError(f"--dtype {dtype}: transformers loaded the model in {got}")
    attn = getattr(model.config, "_attn_implementation", None) or "default"
    description = f"transformers {transformers.__version__} GPT2LMHeadModel ({attn} attention), {_describe(config)}"
    naive_logits, naive_log_prob, naive_text = naive_baseline(ref_gpt, "gpt", params, dtype, device)
    *functions, padded_logits, padded_note = hf_functions(model, config, dtype, device)
    return C.Subject("hf-gpt2", description, dtype, device, ref_gpt, params, config, *functions,
                     naive_logits=naive_logits, naive_log_prob=naive_log_prob, naive_description=naive_text,
                     notes=notes, padded_logits=padded_logits, padded_note=padded_note)  # fmt: skip


# ----------------------------------------------------------------------------- chainrule-gpt


def detect_run(path: Path) -> bool:
    run = path / "run.json"
    if run.is_file():
        return json_field(run, "model") == "gpt"
    return json_field(path / "checkpoint.json", "model") == "gpt"


def _read_run(path: Path):
    """(params: name -> CPU tensor as stored, Config, checkpoint meta) of a chainrule GPT run."""
    from chainrule import models
    from chainrule.fast.train import load_checkpoint

    tensors, meta = load_checkpoint(path, name="gpt")
    return tensors, models.config_from_dict(models.get("gpt"), meta["config"]), meta


def load_run(path: Path, *, dtype: str | None, device: str, bos_token: int | None) -> C.Subject:
    import torch

    from chainrule.fast import backend
    from chainrule.fast import gpt as fast_gpt

    tensors, config, meta = _read_run(path)
    stored = str(tensors["wte"].dtype).removeprefix("torch.")
    dtype = dtype or (stored if stored in ("float64", "float32", "bfloat16") else "float32")
    if dtype == "float16":
        raise C.CheckError("--dtype float16: fast.gpt runs in float64, float32 or bfloat16")
    if bos_token is not None:
        config = dataclasses.replace(config, bos_token=bos_token)  # ValueError naming Config.bos_token
    params = {k: v.to(torch.float64).numpy() for k, v in tensors.items()}
    P = backend.to_torch(params, device, dtype)

    def tokens_t(tokens):
        return torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=device)

    @torch.no_grad()
    def logits(tokens):
        return fast_gpt.forward(P, config, tokens_t(tokens))

    @torch.no_grad()
    def log_prob(tokens):
        return fast_gpt.log_prob(P, config, tokens_t(tokens))

    def cached_logits(tokens):
        return checks.logits_through_cache(fast_gpt, P, config, tokens_t(tokens))

    def greedy(prompt, n):
        out = fast_gpt.greedy(P, config, tokens_t(prompt), n)
        T0 = prompt.shape[1]
        return out, checks.logits_through_cache(fast_gpt, P, config, out[:, :-1], chunks=[T0])[:, T0 - 1 :]

    @torch.no_grad()
    def padded_logits(tokens, mask):
        return fast_gpt.forward(P, config, tokens_t(tokens), tokens_t(mask))

    description = f"fast.gpt (chainrule run at step {meta['step']}), {_describe(config)}"
    naive_logits, naive_log_prob, naive_text = naive_baseline(ref_gpt, "gpt", params, dtype, device)
    notes = [options_note(config)] if options_note(config) else []
    return C.Subject("chainrule-gpt", description, dtype, device, ref_gpt, params, config, logits, log_prob,
                     cached_logits, greedy, naive_logits, naive_log_prob, naive_text, notes=notes,
                     padded_logits=padded_logits)  # fmt: skip


def export_run_to_hf(path: Path, out: Path) -> list[str]:
    """config.json, model.safetensors and generation_config.json that
    transformers.AutoModelForCausalLM.from_pretrained(out) loads as GPT2LMHeadModel: the run's
    weights in their stored dtype (exact), lm_head tied to wte (left out, as save_pretrained does)
    unless the run's Config unties it."""
    import torch
    from safetensors.torch import save_file

    from chainrule.fast.train.checkpoints import atomic_write

    tensors, config, meta = _read_run(path)
    dtype = tensors["wte"].dtype
    state, hf_config = ref_gpt.to_hf_gpt2({k: v.to(torch.float64).numpy() for k, v in tensors.items()}, config)
    if config.tie_word_embeddings:
        del state["lm_head.weight"]  # tied to transformer.wte.weight
    weights = {k: torch.from_numpy(v).to(dtype).contiguous() for k, v in state.items()}
    hf_config |= {"dtype": str(dtype).removeprefix("torch."), "use_cache": True}
    generation = {"bos_token_id": config.bos_token, "eos_token_id": config.bos_token,
                  "pad_token_id": config.bos_token}  # fmt: skip
    atomic_write(out / "model.safetensors", lambda p: save_file(weights, str(p), metadata={"format": "pt"}))
    atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(hf_config, indent=2) + "\n"))
    atomic_write(out / "generation_config.json", lambda p: p.write_text(json.dumps(generation, indent=2) + "\n"))
    return ["config.json", "model.safetensors", "generation_config.json"]


C.register_family("hf-gpt2", "HF transformers GPT-2: config.json model_type 'gpt2' + model.safetensors",
                  detect_hf, load_hf)  # fmt: skip
C.register_family("chainrule-gpt", "a `chainrule train gpt` run directory", detect_run, load_run,
                  {"hf": export_run_to_hf})  # fmt: skip
