"""The application: train a model on an embedded dataset, sample from a trained run, and the demo.

    train_run(model, data, settings, out, ...)   fast.train's loop on chainrule.data, checkpoint in `out`;
                                                  report=f: f(result, seconds) at every evaluation
    sample_run(run_dir, n, ...)                   samples of a trained run: text, an image grid, or audio
    demo(out, quick)                              a small GPT on standard-library bytes and a small
                                                  class-conditional Gated PixelCNN on digits, trained on
                                                  the CPU with progress printed as it goes, with validation
                                                  bits/byte and bits/dim, samples and loss curves; quick:
                                                  a smoke test whose pictures say so

A run directory holds the training checkpoint (model.safetensors, optimizer.safetensors,
checkpoint.json: see fast.train) and run.json: the model's table name, the dataset and the
application settings (window length), so that `sample_run` needs nothing but the directory.

Pictures and sound are written without pickles or downloads: PNG through matplotlib (Agg, no
global backend change), WAV through the standard library's `wave` (16-bit PCM, mono).
"""

from __future__ import annotations

import ast
import json
import math
import os
import time
import wave
from pathlib import Path

import numpy as np

from chainrule import data as cdata
from chainrule import models as cmodels

RUN_FILE = "run.json"
RUN_FORMAT = "chainrule-run"

# What `chainrule train` changes from TrainConfig's defaults when not told otherwise: a higher peak
# rate suits these small models; warmup and evaluation scale with the number of steps.
TRAIN_DEFAULTS = {"lr": 1e-3, "weight_decay": 0.1, "batch_size": 32}


# ----------------------------------------------------------------------------- settings


def parse_pairs(pairs, name: str) -> dict[str, str]:
    """["key=value", ...] -> {key: "value"}; ValueError naming `name` for a malformed or repeated key."""
    out = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ValueError(f"{name}: expected key=value, got {pair!r}")
        if key in out:
            raise ValueError(f"{name}: {key!r} given twice")
        out[key] = value.strip()
    return out


def parse_value(text: str, annotation: str = ""):
    """A command-line value as a Python value: a literal (3, 1e-3, None, True, (0.9, 0.95)) when it
    parses as one, else the string itself; an int for a field annotated float becomes a float."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        value = {"none": None, "true": True, "false": False}.get(lowered, text)
    if "float" in annotation and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def _train_fields() -> dict:
    import dataclasses

    from chainrule.fast.train import TrainConfig

    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def split_settings(model: cmodels.Model, raw: dict[str, str]) -> tuple[dict, dict]:
    """{key: text} -> (model settings, training settings), each parsed by its field's type. A key that is
    a field of neither the model's Config (or "length"), nor TrainConfig, raises ValueError listing both."""
    train_fields = _train_fields()
    model_fields = cmodels.settings(model)
    model_settings, train_settings = {}, {}
    for key, text in raw.items():
        if key in model_fields:
            model_settings[key] = parse_value(text, cmodels.field_type(model, key))
        elif key in train_fields:
            train_settings[key] = parse_value(text, train_fields[key])
        else:
            raise ValueError(f"--config: {key!r} is not a setting of {model.name} ({', '.join(model_fields)}) "
                             f"nor of training ({', '.join(train_fields)})")  # fmt: skip
    return model_settings, train_settings


def train_config(settings: dict, steps: int | None = None):
    """The TrainConfig of a run: TrainConfig's defaults, then TRAIN_DEFAULTS, then `settings`, then
    `steps`; warmup (steps // 20, at most 100) and evaluation (10 times in a run) scale with steps
    unless set."""
    from chainrule.fast.train import TrainConfig

    merged = {**TRAIN_DEFAULTS, **settings}
    if steps is not None:
        merged["steps"] = steps
    total = merged.get("steps", TrainConfig.steps)
    if isinstance(total, int) and total >= 1:
        merged.setdefault("warmup_steps", min(100, total // 20))
        merged.setdefault("eval_every", max(1, total // 10))
        merged.setdefault("log_every", max(1, min(50, total // 20)))
    return TrainConfig(**merged)


# ----------------------------------------------------------------------------- runs


def _trainable(model: cmodels.Model, config, params, kind: str):
    from chainrule.fast.train import Trainable

    return Trainable(model.name, config, params, cmodels.log_prob_fn(model, config), metric=cmodels.metric(kind))


def load_run(run_dir) -> dict:
    """A trained run: {"model", "config", "params", "data", "kind", "app", "meta"}. FileNotFoundError
    when run_dir holds no run; ValueError when its files disagree with each other."""
    from chainrule.fast.train import load_checkpoint

    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        what = "no such directory" if not run_dir.is_dir() else f"no {RUN_FILE} in it"
        raise FileNotFoundError(f"DIR: expected a directory written by `chainrule train` ({RUN_FILE} and a "
                                f"checkpoint), got {str(run_dir)!r}: {what}")  # fmt: skip
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"DIR: {path} is not valid JSON ({error})") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise ValueError(f"DIR: expected {path} with format {RUN_FORMAT!r}, got {run!r:.80}")
    model = cmodels.get(run["model"])
    params, meta = load_checkpoint(run_dir, name=model.name)
    config = cmodels.config_from_dict(model, meta["config"])
    return {"model": model, "config": config, "params": params, "data": run["data"],
            "kind": cmodels.data_kind(run["data"]), "app": run.get("app", {}), "meta": meta}  # fmt: skip


def _run_settings(out: Path, model: cmodels.Model, data_name: str, model_settings: dict, train_settings: dict,
                  resume: bool):  # fmt: skip
    """(data name, model settings, train settings) for a run in `out`: as given for a new run; for a
    resumed one, the checkpoint's, with the given ones over them (train then refuses a mismatch)."""
    has_checkpoint = (out / "checkpoint.json").is_file()
    if not resume:
        if has_checkpoint:
            raise ValueError(f"--out: {str(out)!r} already holds a checkpoint: pass --resume to continue it, "
                             "or choose another --out")  # fmt: skip
        return data_name, model_settings, train_settings
    run = load_run(out)
    if run["model"].name != model.name:
        raise ValueError(f"MODEL: {str(out)!r} holds a {run['model'].name!r} run, got {model.name!r}")
    if data_name is not None and data_name != run["data"]:
        raise ValueError(f"--data: {str(out)!r} was trained on {run['data']!r}, got {data_name!r}")
    saved_train = dict(run["meta"]["train_config"])
    saved_train["betas"] = tuple(saved_train["betas"])
    return run["data"], {**run["meta"]["config"], **run["app"], **model_settings}, {**saved_train, **train_settings}


def train_run(model_name: str, data_name: str | None = None, settings: dict | None = None, *, steps=None,
              out=None, resume: bool = False, device: str | None = None, progress: bool = True,
              seed: int = 0, n_train: int | None = None, n_val: int | None = None, report=None) -> dict:  # fmt: skip
    """Train `model_name` on `data_name` (None: the model's default dataset) with fast.train.

    settings: {key: text or value} for the model's Config, "length" (sequence models) and
    TrainConfig. out: the run directory (checkpoints, run.json); resume: continue the run in out.
    seed: the initialization's seed, and the batches' (TrainConfig.seed) unless settings give one.
    n_train / n_val: use at most this many bytes (text) or examples of each split (None: all).
    report: None, or a function report(result, seconds) called at every evaluation (every
    eval_every steps and at the end) with fast.train's TrainResult so far and the seconds spent
    training; fast.train's own progress output is then off (progress is ignored). The run is
    trained in segments that stop at each evaluation and resume from the checkpoint in `out`
    (needed): fast.train's exact resume makes that the same run, bit for bit.
    -> a summary {"model", "data", "metric", "val_metric", "val_nats", "steps", "seconds", "out",
    "n_params", "config" (dict), "config_obj", "app", "train_config", "history", "params" (final),
    "train_examples", "val_examples"}.
    """
    from chainrule.fast.train import train

    model = cmodels.get(model_name)
    raw = {k: (v if isinstance(v, str) else repr(v)) for k, v in (settings or {}).items()}
    model_settings, train_settings = split_settings(model, raw)
    if device is not None:
        train_settings["device"] = device
    out = Path(out) if out is not None else None
    if resume and out is None:
        raise ValueError("--resume: needs --out DIR, the run to continue")
    if not resume:
        train_settings.setdefault("seed", seed)  # the batches' seed follows the initialization's
    if out is not None:
        data_name, model_settings, train_settings = _run_settings(out, model, data_name, model_settings,
                                                                  train_settings, resume)  # fmt: skip
    data_name = data_name or model.default_data
    config, app = cmodels.make_config(model, data_name, model_settings)
    cfg = train_config(train_settings, steps)
    kind = cmodels.data_kind(data_name)
    train_x = cmodels.examples(model, cdata.load(data_name, "train", n_train), app, config)
    val_x = cmodels.examples(model, cdata.load(data_name, "validation", n_val), app, config)
    trainable = _trainable(model, config, cmodels.init_params(model, config, seed), kind)
    if out is not None and main_process():
        out.mkdir(parents=True, exist_ok=True)
        run = {"format": RUN_FORMAT, "version": 1, "model": model.name, "data": data_name, "app": app}
        (out / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")
    start = time.perf_counter()
    if report is None:
        result = train(trainable, train_x, val_x, cfg, out_dir=out, resume=resume, progress=progress)
    else:
        if out is None:
            raise ValueError("report: needs out, the run directory its segments resume from")
        done = json.loads((out / "checkpoint.json").read_text())["step"] if resume else 0
        stops = [k for k in range(cfg.eval_every, cfg.steps, cfg.eval_every or cfg.steps) if k > done] + [cfg.steps]
        for k, stop in enumerate(stops):
            result = train(trainable, train_x, val_x, cfg, out_dir=out, resume=resume or k > 0, progress=False,
                           stop_at=stop)  # fmt: skip
            report(result, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    return {
        "model": model.name, "data": data_name, "metric": result.metric, "val_metric": result.val_metric,
        "val_nats": result.val_loss, "steps": result.step, "seconds": seconds,
        "out": None if out is None else str(out), "n_params": int(sum(v.numel() for v in result.params.values())),
        "config": cmodels.config_dict(config), "app": app, "train_config": cfg.to_dict(),
        "history": result.history.to_dict(), "params": result.params, "config_obj": config,
        "train_examples": len(train_x[0] if isinstance(train_x, tuple) else train_x),
        "val_examples": len(val_x[0] if isinstance(val_x, tuple) else val_x),
    }  # fmt: skip


def main_process() -> bool:
    """False in the ranks other than 0 of a torchrun launch (they train their shard and write nothing)."""
    return int(os.environ.get("RANK", "0")) == 0


def summary_line(summary: dict) -> str:
    """One line: model, data, steps, validation metric, time."""
    return (f"{summary['model']} on {summary['data']}: {summary['steps']} steps in {summary['seconds']:.1f} s, "
            f"validation {summary['val_metric']:.4f} {summary['metric']} ({summary['val_nats']:.4f} nats per unit)"
            + (f"; checkpoint in {summary['out']}" if summary.get("out") else ""))  # fmt: skip


# ----------------------------------------------------------------------------- sampling


def check_device(device: str):
    """`device` as a torch.device; ValueError for a malformed name or CUDA where there is none."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: expected a torch device like 'cpu' or 'cuda', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: expected an available device, got {device!r} (no CUDA here)")
    return dev


# Generation settings `chainrule sample --processors` takes besides the processors' own names.
SAMPLE_SETTINGS = ("eos_token_id", "pad_token_id", "min_new_tokens", "min_length", "no_repeat_ngram_size",
                   "bad_words_ids", "sequence_bias", "suppress_tokens", "begin_suppress_tokens",
                   "exponential_decay_length_penalty", "stop_sequences", "frequency_penalty", "presence_penalty",
                   "logit_bias", "typical_p", "epsilon_cutoff", "eta_cutoff")  # fmt: skip


def parse_processors(pairs) -> dict:
    """["temperature=0.8", "repetition_penalty=1.2", "eos_token_id=10"] -> {name: value}.

    A name is a logits processor of fast.sampling.chain (temperature, top_k, top_p, min_p, typical,
    epsilon, eta, repetition_penalty, no_repeat_ngram, frequency_penalty, ...: its first parameter
    as the value) or a generation setting of SAMPLE_SETTINGS (GenerationConfig's HF names:
    eos_token_id, min_new_tokens, no_repeat_ngram_size, bad_words_ids, ...). ValueError naming
    --processors for any other name."""
    from chainrule.reference import sampling

    out = {k: parse_value(v) for k, v in parse_pairs(pairs, "--processors").items()}
    for name in out:
        if name not in sampling.PROCESSORS and name not in SAMPLE_SETTINGS:
            raise ValueError(f"--processors: unknown name {name!r}; expected a processor "
                             f"({', '.join(sampling.PROCESSORS)}) or a generation setting "
                             f"({', '.join(SAMPLE_SETTINGS)})")  # fmt: skip
    return out


def _until_eos(row: np.ndarray, eos: tuple) -> np.ndarray:
    """row up to and including its first eos token (all of it without one)."""
    hits = np.flatnonzero(np.isin(row, eos)) if eos else ()
    return row[: hits[0] + 1] if len(hits) else row


def sample_run(run_dir, n: int = 4, *, processors=None, seed: int = 0, length: int | None = None,
               device: str = "cpu") -> dict:  # fmt: skip
    """n samples of a trained run -> {"kind", "samples" (int64 array), "text" (text runs: list of str),
    "levels", "data"}. Sequence models draw `length` tokens (default: the run's window length) through
    the logits `processors` ({name: value}); image models draw whole images."""
    import torch

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"--n: expected a positive int, got {n!r}")
    dev = check_device(device)
    run = load_run(run_dir)
    model, config = run["model"], run["config"]
    params = {k: v.to(device=dev, dtype=torch.float32) for k, v in run["params"].items()}
    length = length if length is not None else run["app"].get("length")
    if model.sequence and (not isinstance(length, int) or length < 1):
        raise ValueError(f"--length: expected a positive int, got {length!r}")
    x = cmodels.sample(model, params, config, np.random.default_rng(seed), n, length=length or 0,
                       processors=processors)  # fmt: skip
    out = {"kind": run["kind"], "samples": x, "data": run["data"], "levels": cdata.info(run["data"])[1]}
    if run["kind"] == "text":
        eos = (processors or {}).get("eos_token_id")
        eos = () if eos is None else ((eos,) if isinstance(eos, int) else tuple(eos))
        out["text"] = [bytes(_until_eos(row, eos).astype(np.uint8)).decode("utf-8", errors="replace") for row in x]
    return out


# ----------------------------------------------------------------------------- pictures and sound


def image_grid(images, levels: int, *, invert: bool = False, scale: int | None = None, pad: int = 1,
               cols: int | None = None) -> np.ndarray:  # fmt: skip
    """(N, C, H, W) ints in [0, levels), C in {1, 3} -> one picture (rows, cols, 3) float in [0, 1]:
    the images row by row on a grid of `cols` columns (None: ceil(sqrt N), near-square), each
    enlarged `scale` times (None: to at least 64 pixels) by pixel repetition, separated by `pad`
    grey pixels. Intensity v / (levels - 1); `invert`: 1 - that (dark ink on white, for the digits)."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"images: expected shape (N, C, H, W) with C 1 or 3 and N >= 1, got {x.shape}")
    if x.dtype.kind not in "iu" or x.min() < 0 or x.max() >= levels:
        raise ValueError(f"images: expected integers in [0, {levels}), got {x.dtype} in [{x.min()}, {x.max()}]")
    N, C, H, W = x.shape
    if cols is not None and (not isinstance(cols, int) or isinstance(cols, bool) or cols < 1):
        raise ValueError(f"cols: expected a positive int or None, got {cols!r}")
    scale = max(1, 64 // max(H, W)) if scale is None else int(scale)
    v = x.astype(np.float64) / (levels - 1)
    v = 1 - v if invert else v
    v = np.repeat(np.repeat(v, scale, axis=2), scale, axis=3)  # (N, C, H s, W s)
    v = np.broadcast_to(v, (N, 3) + v.shape[2:]) if C == 1 else v
    cols = math.ceil(math.sqrt(N)) if cols is None else cols
    rows = math.ceil(N / cols)
    h, w = H * scale, W * scale
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 0.5)
    for k in range(N):
        r, c = divmod(k, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            v[k].transpose(1, 2, 0)  # fmt: skip
    return grid


def write_image_grid(images, levels: int, path, **kwargs) -> Path:
    """`image_grid` saved as a PNG at path. -> path."""
    from matplotlib.image import imsave

    path = Path(path)
    imsave(path, image_grid(images, levels, **kwargs), format="png")
    return path


def write_wav(codes, path, *, sample_rate: int = cdata.SAMPLE_RATE, gap: float = 0.25) -> Path:
    """mu-law codes (N, T) (or (T,)) -> a mono 16-bit PCM WAV file: the N clips decoded
    (chainrule.data.mu_law_decode) one after the other, `gap` seconds of silence between them. -> path."""
    q = np.asarray(codes)
    q = q[None] if q.ndim == 1 else q
    if q.ndim != 2 or q.size == 0:
        raise ValueError(f"codes: expected shape (N, T) or (T,) with T >= 1, got {np.shape(codes)}")
    silence = np.zeros(int(gap * sample_rate))
    pieces = []
    for k, clip in enumerate(q):
        pieces += [silence] * (k > 0) + [cdata.mu_law_decode(clip)]
    pcm = np.clip(np.rint(np.concatenate(pieces) * 32767), -32768, 32767).astype("<i2")
    path = Path(path)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return path


def plot_loss_curves(runs: list[dict], path, *, note: str | None = None) -> Path:
    """Training loss (per step, and its moving average) and validation points of each run summary, in
    bits per unit, one panel per run, saved as a PNG at path. `note`: a line in red above the panels,
    also the PNG's tEXt "Description" (the demo's smoke-test label). -> path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(runs), 3.8 + 0.4 * bool(note)), dpi=110)
    FigureCanvasAgg(fig)
    for i, run in enumerate(runs):
        ax = fig.add_subplot(1, len(runs), i + 1)
        h = run["history"]
        bits = np.asarray(h["loss"]) / math.log(2)
        ax.plot(h["step"], bits, color="tab:blue", alpha=0.3, lw=0.8, label="train (per step)")
        k = max(1, len(bits) // 20)
        if len(bits) >= k > 1:
            smooth = np.convolve(bits, np.ones(k) / k, mode="valid")
            ax.plot(h["step"][k - 1:], smooth, color="tab:blue", lw=1.6, label=f"train (mean of {k})")
        if h["eval_step"]:
            ax.plot(h["eval_step"], np.asarray(h["val_loss"]) / math.log(2), "o-", color="tab:orange", ms=4,
                    label="validation")  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel(run["metric"])
        ax.set_title(f"{run['model']} on {run['data']}: {run['val_metric']:.3f} {run['metric']}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if note:
        fig.suptitle(note, color="tab:red", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    description = note or "training and validation loss, in bits per unit, of " + ", ".join(
        f"{run['model']} on {run['data']}" for run in runs)  # fmt: skip
    fig.savefig(path, format="png", metadata={"Description": description})
    return path


# ----------------------------------------------------------------------------- the demo

# name: (model, data, model settings, train settings, n_train), in the order they train. The Gated
# PixelCNN is class-conditional (the digits' labels as `cond`): asked for a 3 it draws a 3, so its
# samples line up with real digits class by class. It trains first, and its picture is written as
# soon as it is trained (about a minute in); the GPT, the longer run, follows. Every evaluation
# (eval_every steps) is also a progress line.
DEMO = {
    "full": {
        "gated": ("gated", "digits", {"hidden": 32, "n_layers": 5, "num_classes": 10},
                  {"steps": 800, "batch_size": 64, "lr": 3e-3, "warmup_steps": 40, "eval_every": 100,
                   "eval_batches": 0}, None),
        "gpt": ("gpt", "stdlib-bytes", {"block_size": 128, "n_layer": 3, "n_head": 4, "n_embd": 96},
                {"steps": 1200, "batch_size": 32, "lr": 2e-3, "warmup_steps": 60, "eval_every": 100,
                 "eval_batches": 8}, None),
    },
    "quick": {
        "gated": ("gated", "digits", {"hidden": 8, "n_layers": 2, "num_classes": 10},
                  {"steps": 8, "batch_size": 16, "lr": 3e-3, "eval_batches": 2, "eval_every": 4}, None),
        "gpt": ("gpt", "stdlib-bytes", {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
                {"steps": 8, "batch_size": 8, "lr": 3e-3, "eval_batches": 2, "eval_every": 4}, 50_000),
    },
}  # fmt: skip
DEMO_SAMPLES = {"full": (6, 60), "quick": (2, 20)}  # (text samples, digit samples: a multiple of 10 classes)
# What the full demo takes on 2 CPU cores (docs/training.md, "The five-minute demo", says how it was measured).
DEMO_TIME = {"full": "about 4.5 minutes on 2 CPU cores, the digits after 1", "quick": "seconds"}


def smoke_test_note(steps: int) -> str:
    """The label of --quick's pictures and output: what they are, and what they are not."""
    return (f"smoke test: {steps} training steps per model -- not expected to look like digits "
            f"(or the text like Python); run `chainrule demo` without --quick for that")  # fmt: skip


def _describe(model: str, data_name: str, config, app: dict, train_settings: dict) -> str:
    """One line: the model, its size, the data and the training it is about to get."""
    m = cmodels.get(model)
    size = f"{cmodels.n_params(m, config):,} parameters"
    steps, batch = train_settings["steps"], train_settings["batch_size"]
    if model == "gpt":
        what = f"{config.n_layer}-layer GPT (d={config.n_embd}, {config.n_head} heads, {size})"
        shape = f"{batch} x {app['length']} bytes"
    else:
        cond = ", class-conditional" if getattr(config, "num_classes", 0) else ""
        what = f"{config.n_layers}-layer Gated PixelCNN (hidden {config.hidden}{cond}, {size})"
        shape = f"{batch} digits"
    return f"{what} on {data_name}: {steps} steps of {shape}"


def _progress_line(name: str, result, total: int, seconds: float, elapsed: float) -> str:
    """At an evaluation: `name step k/S: train x (mean since the previous evaluation), validation y;
    elapsed (the demo's clock), about t to go (this model, at its rate so far)`."""
    h, step = result.history, result.step
    since = h.eval_step[-2] if len(h.eval_step) > 1 else 0
    train_bits = float(np.mean(h.loss[since:step])) / math.log(2)
    to_go = seconds / step * (total - step)
    return (f"  {name} step {step}/{total}: train {train_bits:.3f} {result.metric}, validation "
            f"{h.val_metric[-1]:.3f} {result.metric}; {elapsed:.0f} s elapsed"
            + (f", about {to_go:.0f} s to go" if step < total else ""))  # fmt: skip


def demo(out="demo", *, quick: bool = False, progress: bool = True, device: str = "cpu") -> dict:
    """The tour: train a small class-conditional Gated PixelCNN on the digits and a small GPT on
    standard-library bytes (sizes in DEMO), then write into `out`:

        gated/, gpt/        the two runs (checkpoints: `chainrule sample out/gpt` works)
        digits.png          digits sampled from the Gated PixelCNN, digit k in column k, next to
                            validation digits arranged the same way (written once it is trained)
        samples.txt         text sampled from the GPT (from bos, temperature 1, no truncation)
        loss_curves.png     training and validation loss of both, in bits per unit
        summary.json        validation bits/byte and bits/dim, steps, seconds, sizes

    progress: print, from the start, what it is about to do, each model's progress (step, train
    and validation loss, seconds) at every evaluation, and what it wrote where. quick: tiny sizes
    and a few steps, a smoke test whose pictures say so (title and PNG "Description").
    -> the summary dict. The runs are seeded: the same machine type gives the same numbers.
    """
    mode = "quick" if quick else "full"
    say = (lambda line: print(line, flush=True)) if progress else (lambda line: None)
    out = Path(out)
    for name in DEMO[mode]:
        if (out / name / "checkpoint.json").is_file():
            raise ValueError(f"--out: {str(out)!r} already holds a demo ({name}/): remove it or choose another --out")
    steps = max(spec[3]["steps"] for spec in DEMO[mode].values())
    note = smoke_test_note(steps) if quick else None
    say(f"chainrule demo{' --quick' if quick else ''}: training {len(DEMO[mode])} small models on {device}, "
        f"sampling digits and text from them into {out}/ ({DEMO_TIME[mode]})")  # fmt: skip
    if note:
        say(note)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = {}
    for i, (name, (model, data_name, model_settings, train_settings, n_train)) in enumerate(DEMO[mode].items()):
        config, app_settings = cmodels.make_config(cmodels.get(model), data_name, model_settings)
        say(f"[{i + 1}/{len(DEMO[mode])}] {_describe(model, data_name, config, app_settings, train_settings)}")

        def report(result, seconds, name=name, total=train_settings["steps"]):
            say(_progress_line(name, result, total, seconds, time.perf_counter() - start))

        runs[name] = train_run(model, data_name, model_settings | train_settings, out=out / name, progress=False,
                               device=device, n_train=n_train, report=report if progress else None)  # fmt: skip
        say("  " + summary_line(runs[name]))
        n_text, n_digits = DEMO_SAMPLES[mode]
        if name == "gated":
            _demo_digits(out, runs[name], n_digits, note, device, say)
        else:
            _demo_text(out, runs[name], n_text, device, say)
    plot_loss_curves(list(runs.values()), out / "loss_curves.png", note=note)
    say(f"wrote {out / 'loss_curves.png'}: training and validation loss of both models")
    summary = {
        "quick": quick,
        "note": note,
        "seconds": time.perf_counter() - start,
        "gpt_val_bits_per_byte": runs["gpt"]["val_metric"],
        "gated_val_bits_per_dim": runs["gated"]["val_metric"],
        "runs": {name: {k: v for k, v in run.items() if k not in ("history", "params", "config_obj")}
                 for name, run in runs.items()},
        "files": ["digits.png", "samples.txt", "loss_curves.png", "summary.json", "gated/", "gpt/"],
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    say(f"wrote {out / 'summary.json'}; the runs are in {out / 'gated'} and {out / 'gpt'} "
        f"(`chainrule sample {out / 'gpt'}` draws more)")  # fmt: skip
    if note:
        say(note)
    return summary


def _demo_digits(out: Path, run: dict, n: int, note: str | None, device: str, say) -> None:
    """digits.png: n digits sampled from the demo's Gated PixelCNN run (a class-conditional one: in
    rows of the classes 0..9) next to validation digits arranged the same way."""
    by_class = bool(run["config"].get("num_classes", 0))
    say(f"sampling {n} digits" + (f" ({n // 10} of each class)" if by_class else "") + " from it")
    digits = sample_run(out / "gated", n, seed=0, device=device)["samples"]
    _digits_figure(_validation_digits(n, by_class=by_class), digits, out / "digits.png", by_class=by_class,
                   note=note)  # fmt: skip
    say(f"wrote {out / 'digits.png'}: validation digits (left) next to Gated PixelCNN samples (right)"
        + (", in columns by class 0..9" if by_class else ""))  # fmt: skip


def _demo_text(out: Path, run: dict, n: int, device: str, say) -> None:
    """samples.txt: n texts sampled from the demo's GPT run (from bos, a window's length each)."""
    say(f"sampling {n} texts of {run['app']['length']} bytes from it")
    text = sample_run(out / "gpt", n, seed=0, device=device)["text"]
    (out / "samples.txt").write_text("".join(f"--- sample {k + 1} ---\n{t}\n" for k, t in enumerate(text)),
                                     encoding="utf-8")  # fmt: skip
    say(f"wrote {out / 'samples.txt'}: {n} GPT samples")


def _validation_digits(n: int, *, by_class: bool) -> np.ndarray:
    """n validation digits: the first n, or (by_class) the first n // 10 of each class in rows of
    0..9, as a class-conditional model's samples come."""
    if not by_class:
        return cdata.digits("validation", n)
    images, labels = cdata.digits("validation"), cdata.digit_labels("validation")
    per = [images[labels == k][: n // 10] for k in range(10)]
    return np.stack([per[k][r] for r in range(n // 10) for k in range(10)])


def _digits_figure(real, sampled, path, *, by_class: bool = False, note: str | None = None, margin: int = 12,
                   title: int = 26, dpi: int = 100) -> Path:  # fmt: skip
    """Validation digits (left) next to sampled ones (right), one PNG. by_class: both come in rows of
    the classes 0..9 (a class-conditional model's samples), drawn ten to a row with each column's
    class written under it; else near-square grids. The grids are placed pixel for pixel (no
    resampling, which would drop some of the 2-pixel separators). `note`: a red line above (the
    smoke-test label), also the PNG's tEXt "Description"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale, pad = 6, 2
    cols = 10 if by_class else None
    grids = [image_grid(x, cdata.DIGIT_LEVELS, invert=True, scale=scale, pad=pad, cols=cols) for x in (real, sampled)]
    h = max(g.shape[0] for g in grids)
    w = max(g.shape[1] for g in grids)
    bottom = margin + (14 if by_class else 0)  # room for the column classes
    top = title + (title if note else 0)
    width, height = 2 * w + 3 * margin, h + top + margin + bottom
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    labels = ("validation digits", "Gated PixelCNN samples" + (", asked for the digit below" if by_class else ""))
    cell = 8 * scale + pad
    for i, (grid, label) in enumerate(zip(grids, labels)):
        x0 = margin + i * (w + margin)
        fig.figimage(grid, xo=x0, yo=bottom + h - grid.shape[0], origin="upper")
        fig.text((x0 + w / 2) / width, (bottom + h + title / 2) / height, label, ha="center", va="center",
                 fontsize=11)  # fmt: skip
        for k in range(10 if by_class else 0):
            fig.text((x0 + pad + k * cell + cell / 2 - 1) / width, (bottom - 9) / height, str(k), ha="center",
                     va="center", fontsize=9, color="0.35")  # fmt: skip
    if note:
        fig.text(0.5, (bottom + h + title + title / 2) / height, note, ha="center", va="center", fontsize=9,
                 color="tab:red", wrap=True)  # fmt: skip
    path = Path(path)
    description = note or ("validation digits (left) and digits sampled from chainrule's Gated PixelCNN "
                           "(right)" + (", in columns by class 0..9" if by_class else ""))  # fmt: skip
    fig.savefig(path, format="png", dpi=dpi, facecolor="white", metadata={"Description": description})
    return path
