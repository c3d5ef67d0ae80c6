"""fast/train/: the training loop (loss, schedule, torch.optim.AdamW, clipping, checkpoints, exact resume, the
resume rule, progress output, errors)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import shutil
import stat
import struct
import sys

import numpy as np
import pytest
import torch

import chainrule.fast.gpt as gpt
import chainrule.fast.pixelcnn as pixelcnn
from chainrule.fast.train import (
    CHECKPOINT_FILES, FORMAT_VERSION, History, Trainable, TrainConfig, batch_indices, evaluate, learning_rate,
    load_checkpoint, metric_value, read_optimizer_state, train,
)  # fmt: skip
from chainrule.reference.checks import assert_close

TEXT = b"the cat sat on the mat. " * 12


def byte_windows(text: bytes, T: int, stride: int) -> np.ndarray:
    data = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
    return np.lib.stride_tricks.sliding_window_view(data, T)[::stride].copy()  # (N, T)


def tiny_gpt(seed: int = 0) -> Trainable:
    config = gpt.Config(vocab_size=256, block_size=7, n_layer=1, n_head=1, n_embd=8)
    return Trainable.from_module(gpt, config, gpt.init(config, np.random.default_rng(seed)))


DATA = byte_windows(TEXT, 7, 5)  # (57, 7)


# ----------------------------------------------------------------------------- a model whose gradient is known


def quadratic(scale: float = 1.0) -> Trainable:
    """log p(x) = -1/2 ||x - m||^2 (up to a constant), m = w.sum(0) + b: a Gaussian mean model with
    a closed-form gradient, to check the optimizer against a NumPy re-implementation."""
    rng = np.random.default_rng(7)
    params = {"w": rng.normal(size=(2, 3)) * scale, "b": rng.normal(size=(3,)) * scale}

    def log_prob(p, x, rng=None):
        m = p["w"].sum(0) + p["b"]  # (3,)
        return -0.5 * ((x.to(m.dtype) - m) ** 2).sum(dim=1)  # (B,)

    return Trainable("quadratic", QuadraticConfig(), params, log_prob)


@dataclasses.dataclass(frozen=True)
class QuadraticConfig:
    dim: int = 3


def numpy_adamw(trainable, data, cfg: TrainConfig, clip: bool = True):
    """AdamW + warmup/cosine + global-norm clipping + decay of >= 2-D tensors, written out in NumPy."""
    w, b = trainable.params["w"].copy(), trainable.params["b"].copy()
    state = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in (("w", w), ("b", b))}
    b1, b2 = cfg.betas
    norms = []
    for s in range(cfg.steps):
        x = data[batch_indices(len(data), cfg.batch_size, s, cfg.seed)].astype(np.float64)  # (B, 3)
        m = w.sum(0) + b
        g_m = (m - x).sum(0) / (cfg.batch_size * 3)  # d loss / d m
        grads = {"w": np.broadcast_to(g_m, w.shape).copy(), "b": g_m.copy()}
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
        norms.append(norm)
        if clip and cfg.grad_clip is not None and norm > cfg.grad_clip:
            grads = {k: g * (cfg.grad_clip / norm) for k, g in grads.items()}
        lr = learning_rate(cfg, s)
        t = s + 1
        for name, value, decay in (("w", w, cfg.weight_decay), ("b", b, 0.0)):
            mom, vel = state[name]
            g = grads[name]
            mom[:] = b1 * mom + (1 - b1) * g
            vel[:] = b2 * vel + (1 - b2) * g * g
            value *= 1 - lr * decay
            value -= lr * (mom / (1 - b1**t)) / (np.sqrt(vel / (1 - b2**t)) + cfg.eps)
    return {"w": w, "b": b}, norms


@pytest.mark.parametrize("clip", [None, 0.05])
def test_update_rule_matches_numpy_adamw(clip):
    # eps >> |g| makes the update ~ lr m / eps, linear in g: clipping changes it visibly.
    data = np.random.default_rng(3).integers(0, 9, size=(13, 3))
    trainable = quadratic()
    cfg = TrainConfig(steps=7, batch_size=5, lr=0.3, weight_decay=0.25, betas=(0.8, 0.9), eps=0.5, warmup_steps=3,
                      min_lr=0.01, grad_clip=clip, dtype="float64", seed=11)  # fmt: skip
    result = train(trainable, data, cfg=cfg, progress=False)
    want, norms = numpy_adamw(trainable, data, cfg)
    for name in want:
        assert_close(f"params[{name}]", want[name], result.params[name], "float64")
    assert_close("grad_norm", np.array(norms), np.array(result.history.grad_norm), "float64")
    if clip is not None:  # the clip was active, and without it the parameters would differ
        assert max(norms) > clip
        unclipped, _ = numpy_adamw(trainable, data, cfg, clip=False)
        assert np.abs(unclipped["w"] - result.params["w"].numpy()).max() > 1e-3


def test_update_rule_matches_torch_adamw():
    # the same update as torch.optim.AdamW (param groups: decay for >= 2-D tensors), in float64
    trainable = quadratic(scale=3.0)
    data = np.random.default_rng(4).integers(0, 9, size=(7, 3))
    cfg = TrainConfig(steps=5, batch_size=3, lr=0.05, weight_decay=0.3, betas=(0.7, 0.8), eps=1e-3, warmup_steps=2,
                      min_lr=0.01, grad_clip=None, dtype="float64")  # fmt: skip
    result = train(trainable, data, cfg=cfg, progress=False)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in trainable.params.items()}
    opt = torch.optim.AdamW([{"params": [p["w"]], "weight_decay": 0.3}, {"params": [p["b"]], "weight_decay": 0.0}],
                            lr=0.05, betas=(0.7, 0.8), eps=1e-3)  # fmt: skip
    for s in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, s)
        x = torch.from_numpy(data[batch_indices(7, 3, s, cfg.seed)])
        opt.zero_grad()
        (-trainable.log_prob(p, x).sum() / (3 * 3)).backward()
        opt.step()
    for name in p:
        assert_close(f"params[{name}]", p[name].detach().numpy(), result.params[name], "float64")


def test_no_weight_decay_on_one_dimensional_tensors():
    # With a zero gradient, AdamW moves a parameter only by decay: w shrinks by (1 - lr wd) per step, b stays.
    trainable = quadratic()

    def zero_gradient(p, x, rng):
        return 0.0 * (p["w"].sum() + p["b"].sum()) + torch.zeros(x.shape[0], dtype=torch.float64)

    zero = Trainable("zero", trainable.config, trainable.params, zero_gradient)
    cfg = TrainConfig(steps=3, batch_size=2, lr=0.1, weight_decay=0.5, warmup_steps=0, min_lr=0.1, grad_clip=None,
                      dtype="float64")  # fmt: skip
    result = train(zero, np.zeros((4, 3), dtype=np.int64), cfg=cfg, progress=False)
    np.testing.assert_array_equal(result.params["b"].numpy(), trainable.params["b"])
    np.testing.assert_allclose(result.params["w"].numpy(), trainable.params["w"] * (1 - 0.1 * 0.5) ** 3, rtol=1e-15)


# ----------------------------------------------------------------------------- schedule and batches


def test_learning_rate_schedule_exact():
    cfg = TrainConfig(steps=13, lr=0.5, warmup_steps=3, min_lr=0.125)
    assert [learning_rate(cfg, s) for s in range(3)] == [0.5 / 3, 1.0 / 3, 0.5]  # linear warmup
    assert learning_rate(cfg, 3) == 0.5  # the peak, where the cosine starts
    assert learning_rate(cfg, 8) == pytest.approx((0.5 + 0.125) / 2, abs=1e-15)  # half way: the mean
    assert learning_rate(cfg, 13) == 0.125  # the floor
    quarter = 0.125 + 0.375 * (1 + math.cos(math.pi / 4)) / 2
    cfg2 = TrainConfig(steps=12, lr=0.5, warmup_steps=4, min_lr=0.125)
    assert learning_rate(cfg2, 6) == pytest.approx(quarter, abs=1e-15)
    decay = [learning_rate(cfg, s) for s in range(3, 13)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert learning_rate(TrainConfig(steps=5, lr=0.5), 0) == 0.5  # no warmup: the peak at once
    with pytest.raises(ValueError, match="step"):
        learning_rate(cfg, -1)


def test_loop_uses_the_schedule():
    cfg = TrainConfig(steps=5, batch_size=3, lr=0.02, warmup_steps=2, min_lr=0.001, seed=1)
    result = train(tiny_gpt(), DATA, cfg=cfg, progress=False)
    assert result.history.lr == [learning_rate(cfg, s) for s in range(5)]
    assert result.history.step == [1, 2, 3, 4, 5]


def test_batch_indices_are_epochs_of_permutations():
    n, B = 7, 3
    drawn = np.concatenate([batch_indices(n, B, s, seed=5) for s in range(7)])  # 21 = 3 epochs of 7
    for e in range(3):
        assert sorted(drawn[e * n:(e + 1) * n]) == list(range(n))
    np.testing.assert_array_equal(batch_indices(n, B, 4, seed=5), batch_indices(n, B, 4, seed=5))
    assert not np.array_equal(drawn[:n], np.concatenate([batch_indices(n, B, s, seed=6) for s in range(7)])[:n])


def test_metric_value():
    assert metric_value("bits/byte", math.log(2.0) * 3) == pytest.approx(3.0, rel=1e-15)
    assert metric_value("perplexity", math.log(5.0)) == pytest.approx(5.0, rel=1e-15)
    assert metric_value("nats", 1.25) == 1.25
    with pytest.raises(ValueError, match="metric"):
        metric_value("accuracy", 1.0)


# ----------------------------------------------------------------------------- learning


def test_loss_decreases_on_repetitive_text():
    cfg = TrainConfig(steps=15, batch_size=6, lr=3e-2, warmup_steps=3, eval_every=5, eval_batches=0, seed=0)
    result = train(tiny_gpt(), DATA, DATA[:13], cfg=cfg, progress=False)
    loss = result.history.loss
    assert loss[0] > 5.0  # ~ ln 256 = 5.55 at initialization
    assert np.mean(loss[-5:]) < 0.6 * loss[0]
    assert result.history.eval_step == [5, 10, 15]
    assert result.history.val_metric[-1] < result.history.val_metric[0] < math.log2(256)
    assert result.history.val_metric[-1] < 0.7 * math.log2(256)  # well below the uniform 8 bits/byte
    assert result.val_metric == result.history.val_metric[-1]
    assert result.metric == "bits/byte"
    # the reported validation number is the trainable's log_prob on those examples
    nats, bits = evaluate(tiny_gpt(), result.params, DATA[:13], batch_size=5)
    assert nats == pytest.approx(result.val_loss, rel=1e-6)
    direct = -gpt.log_prob(result.params, tiny_gpt().config, torch.from_numpy(DATA[:13])).double().sum() / (13 * 7)
    assert nats == pytest.approx(float(direct), rel=1e-6)
    assert bits == nats / math.log(2)


def test_bfloat16_autocast():
    cfg = TrainConfig(steps=8, batch_size=4, lr=1e-2, seed=0)
    f32 = train(tiny_gpt(), DATA, cfg=cfg, progress=False)
    bf16 = train(tiny_gpt(), DATA, cfg=TrainConfig(**{**cfg.to_dict(), "dtype": "bfloat16"}), progress=False)
    assert all(math.isfinite(v) for v in bf16.history.loss)
    assert bf16.history.loss != f32.history.loss  # autocast is on: the products round to bfloat16
    assert bf16.history.loss[-1] < bf16.history.loss[0]
    assert all(v.dtype == torch.float32 for v in bf16.params.values())  # float32 master weights


def test_conditional_data_as_tuple():
    config = pixelcnn.Config(kind="gated", channels=1, height=3, width=3, levels=3, hidden=4, n_layers=1,
                             kernel_size=3, input_kernel=3, num_classes=2)  # fmt: skip
    params = pixelcnn.init(config, np.random.default_rng(0))
    trainable = Trainable.from_module(pixelcnn, config, params)
    assert trainable.metric == "bits/dim" and trainable.name == "pixelcnn"
    rng = np.random.default_rng(1)
    x, labels = rng.integers(0, 3, size=(5, 1, 3, 3)), rng.integers(0, 2, size=5)
    nats, _ = evaluate(trainable, params, (x, labels))
    want = -pixelcnn.log_prob(params, config, x, cond=labels).sum() / (5 * 9)
    assert nats == pytest.approx(float(want), rel=1e-6)
    other, _ = evaluate(trainable, params, (x, 1 - labels))
    assert other != nats  # the labels reach the model
    result = train(trainable, (x, labels), (x, labels), TrainConfig(steps=2, batch_size=3), progress=False)
    assert result.step == 2 and math.isfinite(result.val_loss)


def test_train_is_pure():
    trainable = tiny_gpt()
    before = {k: v.copy() for k, v in trainable.params.items()}
    data = DATA.copy()
    train(trainable, data, data[:3], TrainConfig(steps=2, batch_size=3), progress=False)
    for k in before:
        np.testing.assert_array_equal(trainable.params[k], before[k])
    np.testing.assert_array_equal(data, DATA)


def test_progress_bar_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    train(tiny_gpt(), DATA, DATA[:3], TrainConfig(steps=4, batch_size=3, log_every=2), progress=True)
    drawn = screen.getvalue()
    assert "4/4" in drawn and "loss=" in drawn and "lr=" in drawn  # tqdm's bar and its postfix
    assert "step 4: val loss" in drawn and "bits/byte" in drawn  # the evaluation, above the bar
    assert "step 2: loss" not in drawn  # no log lines on a terminal: the bar says it
    monkeypatch.setattr(sys, "stderr", Terminal())
    train(tiny_gpt(), DATA, DATA[:3], TrainConfig(steps=2, batch_size=3, log_every=1), progress=False)
    assert sys.stderr.getvalue() == ""


def test_progress_lines_when_not_a_terminal(capsys):
    train(tiny_gpt(), DATA, DATA[:3], TrainConfig(steps=4, batch_size=3, log_every=2), progress=True)
    err = capsys.readouterr().err
    assert "step 2: loss" in err and "step 4: loss" in err and "bits/byte" in err
    train(tiny_gpt(), DATA, DATA[:3], TrainConfig(steps=2, batch_size=3, log_every=1), progress=False)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- checkpoints and resume


def assert_same_checkpoint(a, b):
    """The checkpoints in directories a and b hold bit for bit the same parameters, optimizer state
    (AdamW's moments, step counts and parameter groups) and history."""
    params_a, meta_a = load_checkpoint(a)
    params_b, meta_b = load_checkpoint(b)
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name
    opt_a, opt_b = read_optimizer_state(a), read_optimizer_state(b)
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for i, entry in opt_a["state"].items():
        assert entry.keys() == opt_b["state"][i].keys() == {"step", "exp_avg", "exp_avg_sq"}
        for key, value in entry.items():
            assert torch.equal(value, opt_b["state"][i][key]), (i, key)
    assert meta_a["optimizer"] == meta_b["optimizer"]
    assert (meta_a["step"], meta_a["schedule_start"]) == (meta_b["step"], meta_b["schedule_start"])
    for key in ("step", "lr", "loss", "grad_norm", "eval_step", "val_loss"):  # all but the timings
        assert meta_a["history"][key] == meta_b["history"][key], key


def test_resume_is_exact(tmp_path):
    cfg = TrainConfig(steps=7, batch_size=5, lr=1e-2, warmup_steps=2, min_lr=1e-3, checkpoint_every=2,
                      grad_clip=0.5, seed=3)  # fmt: skip
    straight = train(tiny_gpt(), DATA, cfg=cfg, out_dir=tmp_path / "straight", progress=False)
    tmp_path = tmp_path / "resumed"
    first = train(tiny_gpt(), DATA, cfg=cfg, out_dir=tmp_path, progress=False, stop_at=3)
    assert first.step == 3 and load_checkpoint(tmp_path)[1]["step"] == 3
    resumed = train(tiny_gpt(seed=99), DATA, cfg=cfg, out_dir=tmp_path, resume=True, progress=False)
    assert resumed.history.loss == straight.history.loss  # bit for bit, the first three from the checkpoint
    assert resumed.history.lr == straight.history.lr
    for name, value in straight.params.items():
        assert torch.equal(resumed.params[name], value), name
    params, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 7
    for name, value in straight.params.items():
        assert torch.equal(params[name], value), name
    assert_same_checkpoint(tmp_path, tmp_path.parent / "straight")  # the optimizer state too
    assert read_optimizer_state(tmp_path)["state"][0]["step"] == 7
    # a fresh run differs, so the comparison above can fail
    other = train(tiny_gpt(), DATA, cfg=TrainConfig(**{**cfg.to_dict(), "seed": 4}), progress=False)
    assert other.history.loss != straight.history.loss


def test_resume_is_exact_with_dropout(tmp_path):
    # a model with its own noise (dropout on the embedding table) draws it from the rng the loop passes:
    # derived from (seed, step), never carried, so resuming reproduces it
    base = tiny_gpt()

    def log_prob(p, x, rng):
        seen.append(rng.bit_generator.state)
        keep = torch.from_numpy(rng.random(tuple(p["wte"].shape)) >= 0.5)
        return gpt.log_prob({**p, "wte": torch.where(keep, p["wte"] / 0.5, 0.0)}, base.config, x)

    seen = []
    dropout = Trainable("gpt", base.config, base.params, log_prob)
    cfg = TrainConfig(steps=4, batch_size=3, lr=1e-2, seed=1)
    straight = train(dropout, DATA, cfg=cfg, out_dir=tmp_path / "straight", progress=False)
    assert seen == [np.random.default_rng([1, 2, s, 0]).bit_generator.state for s in range(4)]
    train(dropout, DATA, cfg=cfg, out_dir=tmp_path / "resumed", progress=False, stop_at=2)
    resumed = train(dropout, DATA, cfg=cfg, out_dir=tmp_path / "resumed", resume=True, progress=False)
    assert resumed.history.loss == straight.history.loss
    for name, value in straight.params.items():
        assert torch.equal(resumed.params[name], value), name
    assert_same_checkpoint(tmp_path / "resumed", tmp_path / "straight")
    assert straight.history.loss != train(base, DATA, cfg=cfg, progress=False).history.loss  # the noise matters


def test_from_module_passes_the_rng():
    import chainrule.fast.pixelcnnpp as pixelcnnpp
    from chainrule.reference import pixelcnnpp as reference_pixelcnnpp

    config = pixelcnnpp.Config(height=4, width=4, channels=1, nr_filters=4, nr_resnet=1, nr_logistic_mix=2,
                               levels=4, dropout_p=0.5)  # fmt: skip
    params = reference_pixelcnnpp.init(config, np.random.default_rng(0))
    trainable = Trainable.from_module(pixelcnnpp, config, params)
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 4, size=(2, 1, 4, 4)))
    noisy = trainable.log_prob(params, x, np.random.default_rng(5))
    assert torch.equal(noisy, pixelcnnpp.log_prob(params, config, x, rng=np.random.default_rng(5)))
    assert torch.equal(trainable.log_prob(params, x, None), pixelcnnpp.log_prob(params, config, x))
    assert not torch.equal(noisy, trainable.log_prob(params, x, None))


def test_checkpoint_is_safetensors_and_json_only(tmp_path, monkeypatch):
    trainable = tiny_gpt()
    result = train(trainable, DATA, cfg=TrainConfig(steps=2, batch_size=3), out_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CHECKPOINT_FILES)
    headers = {}
    for name in ("model.safetensors", "optimizer.safetensors"):
        raw = (tmp_path / name).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 header size, JSON header, raw tensor bytes
        headers[name] = json.loads(raw[8:8 + n])
        tensors = {k: v for k, v in headers[name].items() if k != "__metadata__"}
        assert {v["dtype"] for v in tensors.values()} <= {"F32", "I64"}
        # nothing but the header and the raw bytes of the tensors, back to back: no pickle anywhere
        spans = sorted(tuple(v["data_offsets"]) for v in tensors.values())
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert len(raw) == 8 + n + spans[-1][1]
    assert set(headers["model.safetensors"]) - {"__metadata__"} == set(trainable.params)
    assert set(headers["optimizer.safetensors"]) - {"__metadata__"} == {
        f"{k}.{moment}" for k in trainable.params for moment in ("exp_avg", "exp_avg_sq")}  # fmt: skip
    assert headers["model.safetensors"]["__metadata__"]["step"] == "2"
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["model"] == "gpt" and meta["step"] == 2 and meta["config"]["n_embd"] == 8
    assert TrainConfig.from_dict(meta["train_config"]) == TrainConfig(steps=2, batch_size=3)
    assert History.from_dict(meta["history"]).loss == result.history.loss

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is forbidden")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    params, meta = load_checkpoint(tmp_path, name="gpt", config=trainable.config)
    for k, v in result.params.items():
        assert torch.equal(params[k], v)
    resumed = train(trainable, DATA, cfg=TrainConfig(steps=3, batch_size=3, new_schedule=True), out_dir=tmp_path,
                    resume=True, progress=False)  # fmt: skip
    assert resumed.step == 3


def test_checkpoint_errors(tmp_path):
    trainable = tiny_gpt()
    with pytest.raises(FileNotFoundError, match="checkpoint.json"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(trainable, DATA, cfg=TrainConfig(steps=2, batch_size=3), out_dir=tmp_path, resume=True, progress=False)
    cfg = TrainConfig(steps=2, batch_size=3)
    train(trainable, DATA, cfg=cfg, out_dir=tmp_path, progress=False)
    other = gpt.Config(vocab_size=256, block_size=7, n_layer=1, n_head=1, n_embd=16)
    with pytest.raises(ValueError, match=r"n_embd: checkpoint 8 vs given 16"):
        load_checkpoint(tmp_path, config=other)
    with pytest.raises(ValueError, match="holds model 'gpt', expected 'rnn'"):
        load_checkpoint(tmp_path, name="rnn")
    with pytest.raises(ValueError, match=r"n_embd"):
        train(Trainable.from_module(gpt, other, gpt.init(other, np.random.default_rng(0))), DATA, cfg=cfg,
              out_dir=tmp_path, resume=True, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"lr: checkpoint 0.0003 vs given 0.1"):
        train(trainable, DATA, cfg=TrainConfig(steps=2, batch_size=3, lr=0.1), out_dir=tmp_path, resume=True,
              progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="out_dir"):
        train(trainable, DATA, cfg=cfg, resume=True, progress=False)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    (tmp_path / "checkpoint.json").write_text(json.dumps({**meta, "step": 1}))
    with pytest.raises(ValueError, match="written at step 2, checkpoint.json says step 1"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "history"}))
    with pytest.raises(ValueError, match=r"lacks the fields \['history'\]"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(tmp_path)


def test_optimizer_is_torch_adamw_and_its_saved_state_round_trips(tmp_path):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen = []
    hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: seen.append(opt))  # every optimizer's
    try:
        trainable = tiny_gpt()
        train(trainable, DATA, cfg=TrainConfig(steps=3, batch_size=3, weight_decay=0.2), out_dir=tmp_path,
              progress=False)  # fmt: skip
    finally:
        hook.remove()
    assert len(seen) == 3 and len({id(opt) for opt in seen}) == 1
    opt = seen[0]
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]  # the CPU's choice
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]  # >= 2-D tensors decay, the others not
    assert [p.ndim >= 2 for p in opt.param_groups[0]["params"]] == [True] * len(opt.param_groups[0]["params"])
    assert all(p.ndim < 2 for p in opt.param_groups[1]["params"])
    # the checkpoint's state, read back without pickle, loads into a fresh torch.optim.AdamW and
    # gives back the state of the optimizer that trained
    saved = read_optimizer_state(tmp_path)
    fresh_params = [[torch.zeros_like(p) for p in g["params"]] for g in opt.param_groups]
    fresh = torch.optim.AdamW([{"params": ps} for ps in fresh_params])
    fresh.load_state_dict(saved)
    want, got = opt.state_dict(), fresh.state_dict()
    assert want["state"].keys() == got["state"].keys() == set(range(len(trainable.params)))
    for i, entry in want["state"].items():
        assert entry.keys() == got["state"][i].keys()
        for key, value in entry.items():
            assert torch.equal(value, got["state"][i][key]), (i, key)
    assert [{k: v for k, v in g.items() if k != "param_names"} for g in got["param_groups"]] == want["param_groups"]
    names = [n for g in saved["param_groups"] for n in g["param_names"]]  # the parameters, index by index
    assert sorted(names) == sorted(trainable.params)
    for name, p in zip(names, (p for g in opt.param_groups for p in g["params"])):
        assert p.shape == trainable.params[name].shape, name


def test_resume_continues_the_schedule_and_refuses_other_steps(tmp_path):
    cfg = TrainConfig(steps=5, batch_size=4, lr=1e-2, warmup_steps=1, min_lr=1e-4, seed=2)
    first = train(tiny_gpt(), DATA, cfg=cfg, out_dir=tmp_path / "run", progress=False)
    assert first.history.lr[-1] < 0.2 * cfg.lr  # near the end of the cosine
    # a different total length is another schedule: refused, saying how to start one
    for steps in (8, 4):
        with pytest.raises(ValueError, match=r"TrainConfig\.steps: .* ends at steps=5; got steps="
                                             f"{steps}" r"\..*new_schedule=True"):  # fmt: skip
            train(tiny_gpt(), DATA, cfg=TrainConfig(**{**cfg.to_dict(), "steps": steps}), out_dir=tmp_path / "run",
                  resume=True, progress=False)  # fmt: skip
    shutil.copytree(tmp_path / "run", tmp_path / "branch")
    # new_schedule=True: a new warmup + cosine from the checkpoint's weights, over steps 5 .. 8
    new = TrainConfig(**{**cfg.to_dict(), "steps": 9, "lr": 5e-3, "warmup_steps": 2, "new_schedule": True})
    more = train(tiny_gpt(), DATA, cfg=new, out_dir=tmp_path / "run", resume=True, progress=False)
    assert more.history.lr[:5] == first.history.lr and more.history.loss[:5] == first.history.loss
    assert more.history.lr[5:] == [learning_rate(new, s, start=5) for s in range(5, 9)]
    assert more.history.lr[5] == 5e-3 / 2  # the first step of the new warmup
    assert more.history.lr[6] == more.history.lr[7] == 5e-3 > more.history.lr[8] > cfg.min_lr  # then the cosine
    stretched = [learning_rate(TrainConfig(**{**new.to_dict(), "new_schedule": False}), s) for s in range(5, 9)]
    assert more.history.lr[5:] != stretched  # not the old schedule stretched to the new length
    meta = load_checkpoint(tmp_path / "run")[1]
    assert meta["schedule_start"] == 5 and meta["step"] == 9 and "new_schedule" not in meta["train_config"]
    # a run on a new schedule, interrupted and resumed (same steps, no new_schedule), is exact
    train(tiny_gpt(), DATA, cfg=new, out_dir=tmp_path / "branch", resume=True, progress=False, stop_at=7)
    again = TrainConfig(**{**new.to_dict(), "new_schedule": False})
    resumed = train(tiny_gpt(seed=5), DATA, cfg=again, out_dir=tmp_path / "branch", resume=True, progress=False)
    assert resumed.history.lr == more.history.lr and resumed.history.loss == more.history.loss
    assert_same_checkpoint(tmp_path / "branch", tmp_path / "run")
    with pytest.raises(ValueError, match="new_schedule=True starts a schedule at the checkpoint's step 9"):
        train(tiny_gpt(), DATA, cfg=new, out_dir=tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ValueError, match=r"TrainConfig\.warmup_steps: expected at most .* = 2, got 3"):
        train(tiny_gpt(), DATA, cfg=TrainConfig(**{**new.to_dict(), "steps": 11, "warmup_steps": 3}),
              out_dir=tmp_path / "run", resume=True, progress=False)  # fmt: skip
    # new_schedule frees the schedule's settings only
    with pytest.raises(ValueError, match=r"weight_decay: checkpoint 0.1 vs given 0.3"):
        train(tiny_gpt(), DATA, cfg=TrainConfig(**{**new.to_dict(), "steps": 12, "weight_decay": 0.3}),
              out_dir=tmp_path / "run", resume=True, progress=False)  # fmt: skip


def test_checkpoint_files_are_world_readable(tmp_path):
    old = os.umask(0o077)  # even under a private umask, as a file written by open() under the usual 022
    try:
        train(tiny_gpt(), DATA, cfg=TrainConfig(steps=2, batch_size=3, checkpoint_every=1), out_dir=tmp_path,
              progress=False)  # fmt: skip
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CHECKPOINT_FILES)  # no temporary file left
    for name in CHECKPOINT_FILES:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_checkpoint_of_the_former_hand_written_adamw_loads_but_does_not_resume(tmp_path):
    # format version 1: optimizer.safetensors held "step" and "<name>.exp_avg" / "<name>.exp_avg_sq" of
    # the hand-written AdamW; checkpoint.json had no "optimizer" (nor "schedule_start")
    from safetensors.torch import save_file

    cfg = TrainConfig(steps=2, batch_size=3)
    result = train(tiny_gpt(), DATA, cfg=cfg, out_dir=tmp_path, progress=False)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    old = {k: v for k, v in meta.items() if k not in ("optimizer", "schedule_start")}
    (tmp_path / "checkpoint.json").write_text(json.dumps({**old, "version": 1}))
    state = {"step": torch.tensor(2, dtype=torch.int64)}
    for name, value in result.params.items():
        state[f"{name}.exp_avg"], state[f"{name}.exp_avg_sq"] = torch.zeros_like(value), torch.ones_like(value)
    save_file(state, str(tmp_path / "optimizer.safetensors"), metadata={"format": "pt", "step": "2"})
    params, loaded = load_checkpoint(tmp_path, name="gpt", config=tiny_gpt().config)  # for sampling: as before
    assert loaded["version"] == 1 < FORMAT_VERSION
    for name, value in result.params.items():
        assert torch.equal(params[name], value), name
    with pytest.raises(ValueError, match=r"optimizer\.safetensors holds no torch.optim state: .* version 1"):
        train(tiny_gpt(), DATA, cfg=cfg, out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"optimizer\.safetensors"):
        read_optimizer_state(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps({**meta, "version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}"):
        load_checkpoint(tmp_path)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "field, value",
    [("steps", 0), ("batch_size", 1.5), ("lr", -1.0), ("lr", float("nan")), ("weight_decay", -0.1),
     ("betas", (0.9,)), ("betas", (0.9, 1.0)), ("eps", 0.0), ("warmup_steps", 11), ("min_lr", 1.0),
     ("grad_clip", 0.0), ("dtype", "float16"), ("eval_every", -1), ("log_every", 0), ("seed", True),
     ("device", "tpu"), ("device", "not a device")],
)  # fmt: skip
def test_train_config_errors(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{"steps": 10, field: value})


def test_train_config_from_dict():
    cfg = TrainConfig(steps=3, betas=(0.5, 0.6))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown fields \['step'\]"):
        TrainConfig.from_dict({"step": 3})


def test_bad_data_and_arguments():
    trainable = tiny_gpt()
    cfg = TrainConfig(steps=2, batch_size=3)
    with pytest.raises(TypeError, match="train_data: expected an integer array, got dtype float64"):
        train(trainable, DATA.astype(np.float64), cfg=cfg, progress=False)
    with pytest.raises(TypeError, match="train_data: expected a NumPy array, got list"):
        train(trainable, DATA.tolist(), cfg=cfg, progress=False)
    with pytest.raises(ValueError, match=r"train_data: expected shape \(N, ...\)"):
        train(trainable, DATA[0], cfg=cfg, progress=False)
    with pytest.raises(ValueError, match=r"val_data: expected examples of shape \(7,\)"):
        train(trainable, DATA, DATA[:, :5], cfg=cfg, progress=False)
    with pytest.raises(ValueError, match=r"stop_at: expected an int in \[1, steps=2\]"):
        train(trainable, DATA, cfg=cfg, progress=False, stop_at=3)
    with pytest.raises(TypeError, match="trainable"):
        train(trainable.log_prob, DATA, cfg=cfg, progress=False)
    with pytest.raises(ValueError, match="token ids must lie in"):  # the model's own validation
        train(trainable, DATA + 250, cfg=cfg, progress=False)
    with pytest.raises(ValueError, match="Trainable.metric"):
        Trainable.from_module(gpt, trainable.config, trainable.params, metric="accuracy")
    with pytest.raises(TypeError, match="module"):
        Trainable.from_module(np, trainable.config, trainable.params)
    bad = Trainable("bad", trainable.config, trainable.params, lambda p, x, rng: p["wte"].sum().reshape(1))
    with pytest.raises(ValueError, match=r"trainable.log_prob: expected shape \(3,\), got \(1,\)"):
        train(bad, DATA, cfg=cfg, progress=False)
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        evaluate(trainable, trainable.params, DATA, batch_size=0)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        evaluate(trainable, trainable.params, DATA, dtype="float16")
    with pytest.raises(ValueError, match="Trainable.units"):
        Trainable("gpt", trainable.config, trainable.params, trainable.log_prob, units=0)
    nan = Trainable("nan", trainable.config, trainable.params,
                    lambda p, x, rng: p["wte"].sum() * torch.full((x.shape[0],), float("nan")))  # fmt: skip
    with pytest.raises(FloatingPointError, match="step 1: gradient norm is nan"):
        train(nan, DATA, cfg=cfg, progress=False)


@pytest.mark.parametrize("killed_at", range(5))
def test_a_kill_at_any_point_of_a_save_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, killed_at):
    """A save renames five files (two tensor files staged as .next, checkpoint.json, then the two
    .next files into place). Killed before any one of them, the directory still loads -- the
    previous checkpoint before checkpoint.json is replaced, the new one after -- and resuming from
    it finishes the run exactly as an uninterrupted one."""
    import chainrule.fast.train.checkpoints as checkpoints

    cfg = TrainConfig(steps=4, batch_size=3, lr=1e-2, warmup_steps=1, checkpoint_every=2)
    straight = train(tiny_gpt(), DATA, cfg=cfg, out_dir=tmp_path / "straight", progress=False)
    run = tmp_path / "run"
    train(tiny_gpt(), DATA, cfg=cfg, out_dir=run, progress=False, stop_at=2)
    before = load_checkpoint(run)[0]

    class Killed(BaseException):
        pass

    calls, real_replace = [], os.replace

    def replace(src, dst):
        if len(calls) == killed_at:
            raise Killed
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", replace)
    with pytest.raises(Killed):
        train(tiny_gpt(), DATA, cfg=cfg, out_dir=run, resume=True, progress=False, stop_at=3)
    monkeypatch.setattr(checkpoints.os, "replace", real_replace)

    params, meta = load_checkpoint(run)
    committed = killed_at > 2  # checkpoint.json is the third rename
    assert meta["step"] == (3 if committed else 2)
    if not committed:
        for name, value in before.items():
            assert torch.equal(params[name], value), name
    else:
        assert any(not torch.equal(params[n], before[n]) for n in before)
    resumed = train(tiny_gpt(), DATA, cfg=cfg, out_dir=run, resume=True, progress=False)
    for name, value in straight.params.items():
        assert torch.equal(resumed.params[name], value), name
    assert_same_checkpoint(run, tmp_path / "straight")
    assert not list(run.glob("*.next")) and not list(run.glob(".*.tmp"))
