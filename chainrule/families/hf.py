"""Helpers shared by the families that read HF transformers directories (chainrule/families/gpt2.py,
llama.py): JSON and weight files, importing transformers quietly, the dtype names, and the model
functions of a `chainrule.check.Subject` for any transformers causal LM. Registers no family."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from chainrule import check as C
from chainrule.reference import checks
from chainrule.reference import gpt as ref_gpt

PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # weights never read: unpickling runs code


def torch_dtype(name: str):
    import torch

    return {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]  # fmt: skip


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise C.CheckError(f"PATH: {path} is not readable JSON ({error})") from None
    if not isinstance(value, dict):
        raise C.CheckError(f"PATH: {path}: expected a JSON object, got {type(value).__name__}")
    return value


def json_field(path: Path, key: str):
    """json[key] of a small JSON file, or None when it is missing or unreadable (detection only)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def weight_files(path: Path) -> list[Path]:
    """model.safetensors, or the shards of model.safetensors.index.json. CheckError otherwise,
    saying that a pickle found instead is never read."""
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise C.CheckError(f"PATH: {index} has no weight_map")
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise C.CheckError(f"PATH: {index} lists {', '.join(missing)}, which {path} lacks")
        return files
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLES)
    if pickles:
        raise C.CheckError(
            f"PATH: no model.safetensors in {path}, only {', '.join(pickles)}: chainrule reads safetensors "
            "only and never unpickles a checkpoint. Convert it where you trust the file: "
            "GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
        )
    raise C.CheckError(f"PATH: no model.safetensors (nor model.safetensors.index.json) in {path}")


@contextlib.contextmanager
def quiet_transformers(transformers):
    """No warnings or progress bars from transformers while loading (restored afterwards)."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(C.HF_MISSING) from None
    return transformers


def hf_functions(model, config, dtype: str, device: str):
    """(logits, log_prob, cached_logits, greedy, padded_logits, padded_note) of a transformers causal LM
    (see chainrule.check.Subject). padded_logits runs the model as HF's generate does: the attention
    mask and the position ids derived from it; padded_note measures the model's forward given the
    mask alone (no position_ids), which counts positions over the pads."""
    import inspect

    import torch

    # transformers 5.2x renamed past_key_values (argument and output) to cache
    kv = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def ids(tokens):
        return torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=device)

    @torch.inference_mode()
    def logits(tokens):
        return model(ids(tokens), use_cache=False).logits  # (B, T, V)

    @torch.inference_mode()
    def log_prob(tokens):
        x = np.asarray(tokens)
        inputs = np.concatenate([np.full((x.shape[0], 1), config.bos_token), x[:, :-1]], axis=1)  # (B, T)
        acc = torch.float64 if dtype == "float64" else torch.float32  # as HF's own loss: upcast the logits
        lp = torch.log_softmax(logits(inputs).to(acc), dim=-1)  # (B, T, V)
        return lp.gather(-1, ids(x)[..., None])[..., 0].sum(-1)  # (B,)

    @torch.inference_mode()
    def cached_logits(tokens):
        t, cache, out = ids(tokens), None, []
        for i in range(t.shape[1]):
            o = model(t[:, i : i + 1], use_cache=True, **{kv: cache})
            cache = getattr(o, kv)
            out.append(o.logits[:, -1])  # (B, V)
        return torch.stack(out, dim=1)  # (B, T, V)

    @torch.inference_mode()
    def greedy(prompt, n):
        t = ids(prompt)
        o = model(t, use_cache=True)
        steps, new = [], []
        for i in range(n):
            step = o.logits[:, -1]  # (B, V)
            steps.append(step)
            new.append(step.argmax(-1))
            if i + 1 < n:
                o = model(new[-1][:, None], use_cache=True, **{kv: getattr(o, kv)})
        return torch.cat([t, torch.stack(new, dim=1)], dim=1), torch.stack(steps, dim=1)

    @torch.inference_mode()
    def padded_logits(tokens, mask, position_ids=True):
        m = ids(mask)
        kw = {"position_ids": torch.where(m == 1, m.cumsum(1) - 1, 1)} if position_ids else {}
        return model(ids(tokens), attention_mask=m, use_cache=False, **kw).logits

    def padded_note(tokens):
        c = checks.compare_padding(lambda x, m: padded_logits(x, m, position_ids=False), tokens, dtype=dtype,
                                   max_pad=C.PAD_WIDTH)  # fmt: skip
        if c.passed:
            return "without position_ids too"
        return f"without position_ids: off by {c.worst['left']:.2g}"

    return logits, log_prob, cached_logits, greedy, padded_logits, padded_note


def hf_bos(hf_config: dict, bos_token: int | None, notes: list) -> int:
    """--bos-token, else the config's bos_token_id when it lies in the vocabulary, else 0 with a
    note: every check compares the model with the reference given the same first token, so any id
    in the vocabulary proves the same thing."""
    try:
        return ref_gpt.hf_bos_token(hf_config, bos_token)
    except ValueError:
        if bos_token is not None:
            raise C.CheckError(f"--bos-token: expected an int in [0, {hf_config['vocab_size']}), "
                               f"got {bos_token}") from None  # fmt: skip
    notes.append(f"bos_token_id {hf_config.get('bos_token_id')!r} is outside the vocabulary: "
                 "log-likelihood uses bos 0 (--bos-token ID)")
    return 0


def naive_baseline(reference, fast_name: str, params: dict, dtype: str, device: str):
    """(naive logits, naive log_prob, description) of the low-precision rule for a model whose spec is
    the module `reference` and whose torch twin is chainrule.fast.<fast_name>; Nones in float64.
    float32/float16: the reference itself in that NumPy dtype; bfloat16 (NumPy has none): the fast
    twin in bfloat16 with unfused attention."""
    if dtype == "float64":
        return None, None, ""
    if dtype in ("float32", "float16"):
        return (C.naive_numpy(reference.forward, params, dtype), C.naive_numpy(reference.log_prob, params, dtype),
                f"the reference itself in {dtype} NumPy")  # fmt: skip
    import importlib

    import torch

    from chainrule.fast import backend

    fast = importlib.import_module(f"chainrule.fast.{fast_name}")
    P = backend.to_torch(params, device, torch.bfloat16)

    def run(fn):
        def naive(config, tokens):
            with torch.no_grad():
                return checks.as_float64(fn(P, config, torch.as_tensor(tokens, device=device), attn_impl="math"))

        return naive

    return run(fast.forward), run(fast.log_prob), f"fast.{fast_name} in bfloat16, unfused attention (no NumPy bfloat16)"
