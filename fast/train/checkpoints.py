"""Checkpoints: safetensors for tensors, JSON for everything else; nothing is ever unpickled.

    save_checkpoint(out_dir, trainable, params, cfg, step, history, optimizer=None, *, schedule_start=0)
    load_checkpoint(out_dir, *, name=None, config=None) -> (params, meta)
    read_optimizer_state(out_dir) -> dict      torch.optim's state_dict, for AdamW.load_state_dict
    restore_optimizer(out_dir, optimizer, params)
    check_resumable(out, meta)                 ValueError for a checkpoint that cannot be resumed

A checkpoint directory holds

    model.safetensors       the parameters, "<name>" -> tensor
    optimizer.safetensors   the optimizer's per-parameter tensors, "<name>.exp_avg", "<name>.exp_avg_sq"
    checkpoint.json         model name and config, training config, step, schedule_start, metric,
                            units, history, and "optimizer": the rest of torch.optim.AdamW's
                            state_dict -- its class, its param_groups' hyper-parameters (with the
                            names of their parameters) and each parameter's step count

Both safetensors headers carry the step, which ties the three files together. Each file is
written to a fresh temporary file beside it, made world-readable (0o644; tempfile creates
0o600), flushed to disk and renamed into place. checkpoint.json is the commit point, so a
kill at any moment leaves a loadable checkpoint, the previous one or the new one:

    1. the new tensors go to model.safetensors.next and optimizer.safetensors.next;
    2. checkpoint.json (the new step) replaces the old one atomically;
    3. each .next file is renamed over its final name.

Killed before 2, checkpoint.json still names the previous step and the final files still hold
it (a .next file of another step is ignored). Killed during 3, a tensor file whose final name
still holds the previous step is read from its .next file, whose step matches.

Format versions: 2 is written here. Version 1 (before torch.optim.AdamW: "step", m and v of a
hand-written AdamW in optimizer.safetensors, no "optimizer" in checkpoint.json) still loads
for sampling -- load_checkpoint reads its parameters unchanged -- but resuming it is refused
with a ValueError naming its optimizer.safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from chainrule.fast.train.optim import load_state

CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "checkpoint.json")
FORMAT = "chainrule-checkpoint"
FORMAT_VERSION = 2
FILE_MODE = 0o644


def config_dict(config) -> dict:
    """A config dataclass as stored in checkpoint.json (tuples -> lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) to a fresh temporary file beside `path`, make it 0o644, flush it to disk and rename
    it over `path`: a reader, or a kill at any moment, finds the old file or the new one, never a part."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _optimizer_parts(optimizer: torch.optim.Optimizer, params: dict) -> tuple[dict, dict]:
    """optimizer.state_dict() -> (its JSON part, its tensors "<name>.<key>"), parameters named by `params`."""
    names_of = {id(t): name for name, t in params.items()}
    try:
        index_names = [names_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    except KeyError:
        raise ValueError("optimizer: expected an optimizer over the tensors of params, got one over others") from None
    saved = optimizer.state_dict()
    groups = []
    for g in saved["param_groups"]:
        hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in g.items() if k not in ("params", "param_names")}
        groups.append({**hyper, "param_names": [index_names[i] for i in g["params"]]})
    state, tensors = {}, {}
    for i, entries in saved["state"].items():
        name, scalars = index_names[i], {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
            else:  # AdamW's step count, a scalar tensor
                scalars[key] = value.item() if isinstance(value, torch.Tensor) else value
        state[name] = scalars
    kind = type(optimizer)
    return {"class": f"{kind.__module__}.{kind.__qualname__}", "param_groups": groups, "state": state}, tensors


def save_checkpoint(out_dir, trainable, params: dict, cfg, step: int, history, optimizer=None, *,
                    schedule_start: int = 0) -> Path:  # fmt: skip
    """Write model.safetensors, optimizer.safetensors (when `optimizer`, a torch.optim optimizer over
    the tensors of `params`, is given) and checkpoint.json to out_dir (created). schedule_start:
    the step where the run's learning-rate schedule began (0, or where a resume with
    new_schedule=True started it). -> out_dir as a Path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt", "step": str(int(step))}  # the step ties the three files together
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    staged = [out / "model.safetensors"]
    atomic_write(_next(staged[0]), lambda p: save_file(tensors, str(p), metadata=header))
    train_config = cfg.to_dict()
    train_config.pop("new_schedule", None)  # an instruction to one resume, not a setting of the run
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": trainable.name,
        "config": config_dict(trainable.config),
        "train_config": train_config,
        "step": int(step),
        "schedule_start": int(schedule_start),
        "metric": trainable.metric,
        "units": trainable.units,
        "random": "stateless: batches from default_rng([seed, 1, epoch]), model noise from "
                  "default_rng([seed, 2, step, rank])",
    }
    if optimizer is not None:
        meta["optimizer"], state = _optimizer_parts(optimizer, params)
        staged.append(out / "optimizer.safetensors")
        atomic_write(_next(staged[1]), lambda p: save_file(state, str(p), metadata=header))
    meta["history"] = history.to_dict()
    text = json.dumps(meta, indent=1, allow_nan=True)
    atomic_write(out / "checkpoint.json", lambda p: p.write_text(text))  # the commit point
    for final in staged:
        os.replace(_next(final), final)
    return out


def _next(path: Path) -> Path:
    """Where the tensors of a checkpoint being written wait until checkpoint.json names their step."""
    return path.with_name(path.name + ".next")


def _written_step(path: Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("step")


def tensor_file(path: Path, step: int) -> Path:
    """The file that holds the tensors of `path` (model.safetensors, optimizer.safetensors) for the
    checkpoint at `step`: `path` itself, or its .next file when a save was killed between
    committing checkpoint.json and renaming it into place (see the module docstring)."""
    staged = _next(path)
    if not staged.is_file() or _written_step(staged) != str(step):
        return path
    if path.is_file() and _written_step(path) == str(step):
        return path
    return staged


def read_meta(out_dir) -> tuple[Path, dict]:
    """(out_dir as a Path, checkpoint.json as a dict); FileNotFoundError / ValueError naming the file."""
    out = Path(out_dir)
    path = out / "checkpoint.json"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: expected {path} (with model.safetensors beside it), "
                                f"got {'no such directory' if not out.is_dir() else 'no checkpoint.json'}")  # fmt: skip
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint: {path} is not valid JSON ({error})") from None
    got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if got != FORMAT:
        raise ValueError(f"checkpoint: expected {path} with format {FORMAT!r}, got {got!r}")
    version = meta.get("version", 1)
    if version not in range(1, FORMAT_VERSION + 1):
        raise ValueError(f"checkpoint: {path} has format version {version!r}; this chainrule reads versions "
                         f"1 to {FORMAT_VERSION}")  # fmt: skip
    missing = [k for k in ("model", "config", "train_config", "step", "history") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint: {path} lacks the fields {missing}")
    return out, meta


def load_tensors(path: Path, step: int) -> dict:
    """A safetensors file of the checkpoint at `step` (ValueError if it was written at another step)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        written = (f.metadata() or {}).get("step")
    if written is not None and written != str(step):
        raise ValueError(f"checkpoint: {path} was written at step {written}, checkpoint.json says step {step} "
                         "(an interrupted write?)")  # fmt: skip
    return load_file(str(path))


def check_match(meta: dict, name, config, where: str) -> None:
    """ValueError when the checkpoint's model name or config differs from `name` / `config` (None: any)."""
    if name is not None and meta["model"] != name:
        raise ValueError(f"checkpoint: {where} holds model {meta['model']!r}, expected {name!r}")
    if config is not None:
        want = config_dict(config)
        got = meta["config"]
        diff = sorted(k for k in set(want) | set(got) if want.get(k, "<missing>") != got.get(k, "<missing>"))
        if diff:
            details = ", ".join(f"{k}: checkpoint {got.get(k, '<missing>')!r} vs given {want.get(k, '<missing>')!r}"
                                for k in diff)  # fmt: skip
            raise ValueError(f"checkpoint: the config in {where} does not match ({details})")


def load_checkpoint(out_dir, *, name: str | None = None, config=None) -> tuple[dict, dict]:
    """Parameters and metadata of the checkpoint in out_dir (safetensors + JSON; nothing unpickled).

    -> (params: dict name -> CPU torch tensor, meta: checkpoint.json as a dict). FileNotFoundError
    when out_dir holds no checkpoint; ValueError when `name` or `config` (a config dataclass) is
    given and differs from the checkpoint's (the message lists the differing fields). Reads
    format versions 1 and 2 alike (the parameters' format did not change).
    """
    out, meta = read_meta(out_dir)
    check_match(meta, name, config, str(out))
    model = tensor_file(out / "model.safetensors", meta["step"])
    if not model.is_file():
        raise FileNotFoundError(f"checkpoint: expected {model} beside {out / 'checkpoint.json'}, got none")
    return load_tensors(model, meta["step"]), meta


def check_resumable(out: Path, meta: dict) -> None:
    """ValueError naming the file when the checkpoint (out, meta) cannot be resumed: format version 1,
    whose optimizer.safetensors holds the hand-written AdamW's state, not torch.optim's."""
    if "optimizer" not in meta:
        raise ValueError(f"checkpoint: {out / 'optimizer.safetensors'} holds no torch.optim state: "
                         f"{out / 'checkpoint.json'} has format version {meta.get('version', 1)} (the hand-written "
                         "AdamW before torch.optim.AdamW), which cannot be resumed. Its parameters still load "
                         "(load_checkpoint, `chainrule sample`): train on from them as a new run, without resume")


def read_optimizer_state(out_dir) -> dict:
    """The optimizer state of out_dir's checkpoint as torch.optim's state_dict, ready for
    torch.optim.AdamW(...).load_state_dict: {"state": {i: {"step", "exp_avg", "exp_avg_sq"}},
    "param_groups": [{hyper-parameters..., "params": [i, ...], "param_names": [name, ...]}]},
    the indices i in the saved order of the groups' parameters (CPU tensors; the step counts as
    scalar tensors of torch's default float dtype, as torch keeps them).

    FileNotFoundError without optimizer.safetensors; ValueError naming it for a version-1
    checkpoint (the former hand-written AdamW: not resumable) or an inconsistent one.
    """
    return _read_optimizer(out_dir)[2]


def _read_optimizer(out_dir) -> tuple[Path, str, dict]:
    """-> (optimizer.safetensors's path, the saved optimizer's class name, read_optimizer_state's dict)."""
    out, meta = read_meta(out_dir)
    check_resumable(out, meta)
    path, section = tensor_file(out / "optimizer.safetensors", meta["step"]), meta["optimizer"]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: resuming needs {path}, got none")
    tensors = load_tensors(path, meta["step"])
    try:
        groups, index = [], {}
        for g in section["param_groups"]:
            ids = [index.setdefault(n, len(index)) for n in g["param_names"]]
            groups.append({**g, "betas": tuple(g["betas"]), "params": ids})
        state = {index[n]: {k: torch.tensor(float(v)) for k, v in scalars.items()}
                 for n, scalars in section["state"].items()}  # fmt: skip
        for key, value in tensors.items():
            name, _, entry = key.rpartition(".")
            state[index[name]][entry] = value
        kind = section["class"]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"checkpoint: the optimizer state in {path} and {out / 'checkpoint.json'} is "
                         f"inconsistent ({type(error).__name__}: {error})") from None  # fmt: skip
    return path, kind, {"state": state, "param_groups": groups}


def restore_optimizer(out_dir, optimizer: torch.optim.Optimizer, params: dict) -> None:
    """Load out_dir's optimizer state into `optimizer` (over the tensors of `params`, name -> tensor),
    matching parameters by name; its fused / foreach choice stays this run's. ValueError naming the
    file when the class, the groups or a shape differ."""
    path, saved_class, saved = _read_optimizer(out_dir)
    kind = type(optimizer)
    if saved_class != f"{kind.__module__}.{kind.__qualname__}":
        raise ValueError(f"checkpoint: {path} holds the state of {saved_class}, expected {kind.__qualname__}")
    names_of = {id(t): name for name, t in params.items()}
    own = [[names_of[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    theirs = [g["param_names"] for g in saved["param_groups"]]
    if [sorted(g) for g in own] != [sorted(g) for g in theirs]:
        raise ValueError(f"checkpoint: {path} holds parameter groups {theirs}, expected {own}")
    saved_index = {n: i for g in saved["param_groups"] for n, i in zip(g["param_names"], g["params"])}
    own_index = {n: i for i, n in enumerate(n for g in own for n in g)}
    state = {}
    for name, i in own_index.items():
        entry = saved["state"].get(saved_index[name])
        if entry is None:
            continue
        for key, value in entry.items():
            if value.ndim > 0 and value.shape != params[name].shape:
                raise ValueError(f"checkpoint: {path} holds {name}.{key} of shape {tuple(value.shape)}, expected "
                                 f"{tuple(params[name].shape)}")  # fmt: skip
        state[i] = entry
    groups = [{**{k: v for k, v in g.items() if k not in ("params", "param_names")},
               "params": [own_index[n] for n in names]} for g, names in zip(saved["param_groups"], own)]  # fmt: skip
    load_state(optimizer, {"state": state, "param_groups": groups})
