"""The application layer: `chainrule train / sample / demo` through a real subprocess at tiny sizes,
their errors, the model table, run directories, and the files they write (PNG, WAV)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from chainrule import app, cli_app, data, models

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY_GPT = {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 16, "batch_size": 4}


def chainrule(*args, timeout=180):
    """Run `python -m chainrule ARGS` from the repository root -> CompletedProcess. Under pytest-xdist
    the command gets one torch thread, as the worker itself has (see conftest.py)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "chainrule", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def tiny_run(out, model="gpt", data_name=None, steps=3, **settings):
    settings = {**(TINY_GPT if model == "gpt" else {}), **settings}
    n_train, n_val = (4, 2) if data_name == "tones" else (20_000 if model == "gpt" else None, None)
    return app.train_run(model, data_name, settings, steps=steps, out=out, progress=False, n_train=n_train,
                         n_val=n_val)  # fmt: skip


# ----------------------------------------------------------------------------- through the command


def test_train_then_sample_text_through_the_command(tmp_path):
    run = tmp_path / "gpt"
    r = chainrule("train", "gpt", "--config", "n_layer=1", "n_head=2", "n_embd=8", "block_size=16",
                  "--config", "batch_size=4", "--steps", "3", "--out", str(run), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation" in r.stdout and "bits/byte" in r.stdout
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["model"] == "gpt" and meta["step"] == 3 and meta["config"]["n_embd"] == 8
    reported = float(r.stdout.split("validation ")[1].split()[0])
    assert reported == pytest.approx(meta["history"]["val_metric"][-1], abs=5e-5)  # printed to 4 places
    s = chainrule("sample", str(run), "--n", "3", "--processors", "temperature=0.7", "top_k=20", "--seed", "4")
    assert s.returncode == 0, s.stderr
    assert s.stdout.count("--- sample ") == 3
    again = app.sample_run(run, 3, processors={"temperature": 0.7, "top_k": 20}, seed=4)["text"]
    assert s.stdout == "".join(f"--- sample {i + 1} ---\n{t}\n" for i, t in enumerate(again))  # seeded
    # history processors and end of sequence by name: each sample stops at its first space (byte 32),
    # made likely by a logit bias; the rest of the row is pad, not printed
    settings = ["repetition_penalty=1.3", "no_repeat_ngram=2", "eos_token_id=32", "logit_bias={32: 4.0}"]
    e = chainrule("sample", str(run), "--n", "6", "--processors", *settings, "--length", "12")
    assert e.returncode == 0, e.stderr
    assert e.stdout.count("--- sample ") == 6
    texts = app.sample_run(run, 6, processors=app.parse_processors(settings), length=12)["text"]
    assert all(" " not in t[:-1] for t in texts) and sum(t.endswith(" ") for t in texts) >= 3, texts


def test_demo_quick_through_the_command(tmp_path):
    out = tmp_path / "demo"
    r = chainrule("demo", "--quick", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bits/byte" in r.stdout and "bits/dim" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True
    for key in ("gpt_val_bits_per_byte", "gated_val_bits_per_dim"):
        assert math.isfinite(summary[key]) and summary[key] > 0
    assert summary["gpt_val_bits_per_byte"] < 8.0  # better than uniform over bytes after a few steps
    assert summary["gated_val_bits_per_dim"] < math.log2(17)  # better than uniform over 17 levels
    for name in ("digits.png", "loss_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert (out / "samples.txt").read_text(encoding="utf-8").count("--- sample ") == app.DEMO_SAMPLES["quick"][0]
    assert (out / "gpt" / "model.safetensors").is_file() and (out / "gated" / "model.safetensors").is_file()
    # the runs are ordinary run directories: they sample
    img = tmp_path / "grid.png"
    assert cli_app.main(["sample", str(out / "gated"), "--n", "4", "--out", str(img)]) == 0
    assert img.read_bytes()[:8] == PNG
    # it says what it does from the first line, and that --quick is a smoke test
    lines = r.stdout.splitlines()
    assert lines[0].startswith("chainrule demo --quick: training 2 small models on cpu")
    assert lines[1] == app.smoke_test_note(8) and lines[-2] == app.smoke_test_note(8)
    assert lines[-1].startswith("demo --quick: done in ")


def png_text(path) -> dict:
    """The text chunks (tEXt, iTXt) of a PNG file: {keyword: text}."""
    from PIL import Image

    with Image.open(path) as image:
        return dict(image.text)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`app.demo(quick=True)` once, in process: (out dir, everything it printed, and what it had
    printed when each call of fast.train's `train` (a training segment) began)."""
    import contextlib
    import io

    import chainrule.fast.train as ftrain

    out = tmp_path_factory.mktemp("quick") / "demo"
    buffer, before_segment = io.StringIO(), []
    real = ftrain.train

    def spy(*args, **kwargs):
        before_segment.append(buffer.getvalue())
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buffer):
        mp.setattr(ftrain, "train", spy)
        summary = app.demo(out, quick=True)
    return out, summary, buffer.getvalue(), before_segment


def test_demo_reports_progress_before_training_ends(quick_demo):
    out, summary, printed, before_segment = quick_demo
    # quick trains each model 8 steps, evaluating (and reporting) at 4 and 8: two segments each
    assert len(before_segment) == 4
    first, gated_second, gpt_first, gpt_second = before_segment
    # before the first step: what it is about to do, the smoke-test label and the first model
    assert first.startswith(f"chainrule demo --quick: training 2 small models on cpu, sampling digits and text "
                            f"from them into {out}/ (seconds)\n")  # fmt: skip
    assert app.smoke_test_note(8) in first and "[1/2] 2-layer Gated PixelCNN (hidden 8, class-conditional, " in first
    assert "gated step" not in first  # no progress line before any training
    # while the Gated PixelCNN trains: its step 4 line (train and validation loss, elapsed) before it goes on
    line = next(x for x in gated_second.splitlines() if x.startswith("  gated step 4/8: "))
    assert "bits/dim, validation " in line and " s elapsed, about " in line and "s to go" in line
    assert "gated on digits: 8 steps" not in gated_second and "digits.png" not in gated_second
    # its summary and its picture come before the GPT starts; then the GPT's progress
    assert "  gated step 8/8: " in gpt_first and "gated on digits: 8 steps in" in gpt_first
    assert f"wrote {out / 'digits.png'}" in gpt_first and (out / "digits.png").is_file()
    assert "[2/2] 1-layer GPT (d=16, 2 heads, " in gpt_first
    assert "  gpt step 4/8: " in gpt_second and "bits/byte" in gpt_second
    # the whole output, in order: plan, each model's progress, summary and samples, the files written
    order = ["chainrule demo --quick:", "smoke test:", "[1/2]", "  gated step 4/8", "  gated step 8/8",
             "  gated on ", "sampling 20 digits (2 of each class)", f"wrote {out / 'digits.png'}", "[2/2]",
             "  gpt step 4/8", "  gpt step 8/8", "  gpt on ", "sampling 2 texts of 32 bytes",
             f"wrote {out / 'samples.txt'}", f"wrote {out / 'loss_curves.png'}", f"wrote {out / 'summary.json'}",
             "smoke test:"]  # fmt: skip
    lines = printed.splitlines()
    assert len(lines) == len(order)
    for line, start in zip(lines, order):
        assert line.startswith(start), (line, start)
    assert "\r" not in printed  # plain lines, no progress bar: readable in a log


def test_demo_quick_pictures_say_they_are_a_smoke_test(quick_demo, tmp_path):
    out, summary, printed, _ = quick_demo
    note = app.smoke_test_note(8)
    assert note.startswith("smoke test: 8 training steps per model -- not expected to look like digits")
    assert summary["note"] == note and json.loads((out / "summary.json").read_text())["note"] == note
    for name in ("digits.png", "loss_curves.png"):
        assert png_text(out / name)["Description"] == note, name
    # the pictures of a real run carry no such label
    runs = [{"model": "gated", "data": "digits", "metric": "bits/dim", "val_metric": 1.5,
             "history": {"step": [1, 2], "loss": [2.0, 1.0], "eval_step": [2], "val_loss": [1.0]}}]  # fmt: skip
    x = data.digits("validation", 20)
    digits = app._digits_figure(x, x, tmp_path / "d.png", by_class=True)
    for path in (digits, app.plot_loss_curves(runs, tmp_path / "c.png")):
        assert "smoke test" not in png_text(path)["Description"] and png_text(path)["Description"]


def test_demo_digits_line_up_by_class():
    real = app._validation_digits(30, by_class=True)
    images, labels = data.digits("validation"), data.digit_labels("validation")
    for k, image in enumerate(real):
        (match,) = np.flatnonzero((images == image).all(axis=(1, 2, 3)))[:1]
        assert labels[match] == k % 10  # row-major in rows of ten: digit k in column k, as sampled
    assert np.array_equal(app._validation_digits(7, by_class=False), data.digits("validation", 7))
    grid = app.image_grid(real, data.DIGIT_LEVELS, scale=1, pad=1, cols=10)
    assert grid.shape == (3 * 9 + 1, 10 * 9 + 1, 3)
    with pytest.raises(ValueError, match="cols: expected a positive int or None, got 0"):
        app.image_grid(real, data.DIGIT_LEVELS, cols=0)


def test_reported_training_is_the_same_run(tmp_path):
    """train_run(report=...) trains in segments that resume from the checkpoint: the same run bit for bit."""
    calls = []
    whole = tiny_run(tmp_path / "whole", steps=6, eval_every=2)
    parts = app.train_run("gpt", None, {**TINY_GPT, "eval_every": 2}, steps=6, out=tmp_path / "parts",
                          progress=False, n_train=20_000, report=lambda r, s: calls.append((r.step, s)))  # fmt: skip
    assert [step for step, _ in calls] == [2, 4, 6] and all(s > 0 for _, s in calls)
    assert parts["history"] == whole["history"] | {"units_per_s": parts["history"]["units_per_s"]}
    for name, value in whole["params"].items():
        assert torch.equal(value, parts["params"][name]), name
    with pytest.raises(ValueError, match="report: needs out"):
        app.train_run("gpt", None, TINY_GPT, steps=2, n_train=20_000, report=lambda r, s: None)


# ----------------------------------------------------------------------------- errors (in process)


def test_clear_errors(tmp_path, capsys):
    def error(*argv):
        assert cli_app.main(list(argv)) == 2
        return capsys.readouterr().err

    assert "model: expected one of gpt" in error("train", "transformer-xl")
    assert "data: expected one of stdlib-bytes" in error("train", "gpt", "--data", "imagenet")
    assert "data: model 'gpt' models text/audio data" in error("train", "gpt", "--data", "digits")
    assert "'n_layers' is not a setting of gpt" in error("train", "gpt", "--config", "n_layers=2")
    assert "expected key=value, got 'n_layer'" in error("train", "gpt", "--config", "n_layer")
    assert "Config.n_embd" in error("train", "gpt", "--config", "n_embd=7", "n_head=2", "--out", str(tmp_path / "a"))
    missing = error("sample", str(tmp_path / "nowhere"))
    assert "DIR: expected a directory written by `chainrule train`" in missing and "no such directory" in missing
    assert "--out: folder" in error("sample", str(tmp_path), "--out", str(tmp_path / "no" / "x.png"))
    if not torch.cuda.is_available():
        assert "--device: expected an available device, got 'cuda'" in error("sample", str(tmp_path), "--device", "cuda")


def test_train_list_shows_every_model_and_dataset(capsys):
    assert cli_app.main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    for name in models.models():
        assert f"  {name} " in out, name
    for name in data.datasets():
        assert (f"  {name} " in out) == (name != "stdlib-words"), name  # word sentences train no model here


def test_a_config_that_does_not_match_the_checkpoint_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    tiny_run(run, steps=2)
    # resuming with a different model size
    assert cli_app.main(["train", "gpt", "--out", str(run), "--resume", "--config", "n_embd=16", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "n_embd: checkpoint 8 vs given 16" in err
    # another model on the same run
    assert cli_app.main(["train", "lstm", "--out", str(run), "--resume"]) == 2
    assert "holds a 'gpt' run" in capsys.readouterr().err
    # training over an existing checkpoint without --resume
    assert cli_app.main(["train", "gpt", "--out", str(run), "--quiet"]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    # a run.json naming a model whose checkpoint is another's
    (run / "run.json").write_text(json.dumps({"format": app.RUN_FORMAT, "model": "nplm", "data": "stdlib-bytes"}))
    assert cli_app.main(["sample", str(run)]) == 2
    assert "holds model 'gpt', expected 'nplm'" in capsys.readouterr().err


def test_class_conditional_gated_pixelcnn_trains_on_the_digit_labels(tmp_path):
    run = tmp_path / "cond"
    s = tiny_run(run, "gated", steps=1, hidden=3, n_layers=1, num_classes=10, batch_size=3, eval_batches=0)
    assert s["config"]["num_classes"] == 10 and s["train_examples"] == len(data.digits("train"))
    loaded = app.load_run(run)
    labels = data.digit_labels("validation")
    nats = -models.get("gated").fast().log_prob(loaded["params"], loaded["config"], data.digits("validation"),
                                                cond=labels).double().sum() / (labels.size * 64)  # fmt: skip
    assert float(nats) == pytest.approx(s["val_nats"], rel=1e-5)  # validation scored with the true labels
    assert app.sample_run(run, 12)["samples"].shape == (12, 1, 8, 8)  # classes 0..9, 0, 1 in turn
    with pytest.raises(ValueError, match="num_classes=10 needs class labels; 'shapes' has none"):
        tiny_run(tmp_path / "x", "gated", "shapes", steps=1, num_classes=10)
    with pytest.raises(ValueError, match="num_classes: expected at least 10 .the classes of 'digits'"):
        tiny_run(tmp_path / "y", "gated", steps=1, num_classes=4)


def test_processors_are_for_sequence_models(tmp_path):
    run = tmp_path / "img"
    tiny_run(run, "pixelcnn", steps=1, hidden=3, n_layers=1, batch_size=3)
    with pytest.raises(ValueError, match="processors: logits processors apply to sequence models"):
        app.sample_run(run, 2, processors={"top_k": 3})


# ----------------------------------------------------------------------------- runs


def test_resume_continues_the_run_and_keeps_its_settings(tmp_path):
    run = tmp_path / "run"
    first = tiny_run(run, steps=4, lr=2e-3)
    assert first["steps"] == 4 and first["train_config"]["lr"] == 2e-3
    # more steps is another learning-rate schedule: refused unless asked for (--config new_schedule=true)
    with pytest.raises(ValueError, match=r"TrainConfig\.steps: .*new_schedule=true"):
        app.train_run("gpt", None, {}, steps=6, out=run, resume=True, progress=False, n_train=20_000)
    more = app.train_run("gpt", None, {"new_schedule": "true"}, steps=6, out=run, resume=True, progress=False,
                         n_train=20_000)  # fmt: skip
    assert more["steps"] == 6 and more["config"] == first["config"] and more["train_config"]["lr"] == 2e-3
    assert more["history"]["loss"][:4] == first["history"]["loss"]  # the history carries on
    assert len(more["history"]["loss"]) == 6


def test_summary_and_run_files(tmp_path):
    run = tmp_path / "run"
    s = tiny_run(run, steps=3)
    assert s["metric"] == "bits/byte" and s["val_metric"] == pytest.approx(s["val_nats"] / math.log(2), rel=1e-12)
    assert s["n_params"] == sum(int(np.prod(shape)) for shape in models.get("gpt").fast().param_shapes(
        s["config_obj"]).values())  # fmt: skip
    assert json.loads((run / "run.json").read_text()) == {"format": app.RUN_FORMAT, "version": 1, "model": "gpt",
                                                          "data": "stdlib-bytes", "app": {"length": 16}}  # fmt: skip
    loaded = app.load_run(run)
    assert loaded["config"] == s["config_obj"] and loaded["kind"] == "text"
    for name, value in loaded["params"].items():
        assert torch.equal(value, s["params"][name].cpu()), name  # the checkpoint holds the final params


def test_top_k_1_sampling_is_greedy_decoding(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, steps=2)
    loaded = app.load_run(run)
    got = app.sample_run(run, 3, processors={"top_k": 1}, seed=9, length=11)
    prompt = torch.full((3, 1), loaded["config"].bos_token)
    greedy = models.get("gpt").fast().greedy(loaded["params"], loaded["config"], prompt, 11)[:, 1:].numpy()
    assert np.array_equal(got["samples"], greedy)
    assert got["text"] == [bytes(row.astype(np.uint8)).decode("utf-8", errors="replace") for row in greedy]


def test_audio_run_samples_to_a_wav(tmp_path):
    run = tmp_path / "audio"
    s = tiny_run(run, "nplm", "tones", steps=2, order=3, n_embd=4, hidden=8, length=64, batch_size=3)
    assert s["metric"] == "bits/dim" and s["train_examples"] == 4 * (4096 // 64)
    path = tmp_path / "x.wav"
    assert cli_app.main(["sample", str(run), "--n", "2", "--length", "100", "--out", str(path)]) == 0
    with wave.open(str(path), "rb") as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 16000)
        assert f.getnframes() == 2 * 100 + 4000  # two clips and a quarter second between them


# ----------------------------------------------------------------------------- models table


def test_every_model_builds_for_its_data_and_scores_it():
    for name in models.models():
        m = models.get(name)
        for data_name in ("stdlib-bytes", "tones") if m.sequence else ("digits", "shapes"):
            size = {"length": 5} if m.sequence else {}
            config, settings = models.make_config(m, data_name, size)
            ds = data.load(data_name, "validation", 500 if data_name == "stdlib-bytes" else 2)
            x = models.examples(m, ds, settings)
            assert x.shape[1:] == ((5,) if m.sequence else ds.x.shape[1:]), (name, data_name)
            params = models.init_params(m, config, 0)
            lp = m.fast().log_prob(params, config, x[:2])
            assert lp.shape == (2,) and bool(torch.all(lp < 0)), (name, data_name)


def test_model_table_errors():
    with pytest.raises(ValueError, match="model: expected one of gpt, .*, got 'bert'"):
        models.get("bert")
    with pytest.raises(ValueError, match=r"config: length: expected at most block_size=16, got 17"):
        models.make_config(models.get("gpt"), "stdlib-bytes", {"block_size": 16, "length": 17})
    with pytest.raises(ValueError, match="has no setting 'length'"):
        models.make_config(models.get("gated"), "digits", {"length": 3})


def test_settings_are_parsed_by_field_type():
    gpt = models.get("gpt")
    model_settings, train_settings = app.split_settings(gpt, {"n_layer": "3", "layer_norm_eps": "1", "lr": "1",
                                                              "grad_clip": "None", "betas": "(0.9, 0.99)"})  # fmt: skip
    assert model_settings == {"n_layer": 3, "layer_norm_eps": 1.0}
    assert train_settings == {"lr": 1.0, "grad_clip": None, "betas": (0.9, 0.99)}
    assert isinstance(model_settings["layer_norm_eps"], float) and isinstance(train_settings["lr"], float)
    assert app.parse_value("gated") == "gated" and app.parse_value("true") is True
    assert app.parse_processors(["temperature=0.5", "top_p=0.9"]) == {"temperature": 0.5, "top_p": 0.9}
    assert app.parse_processors(["repetition_penalty=1.2", "eos_token_id=10,13"]) == {
        "repetition_penalty": 1.2, "eos_token_id": (10, 13)}
    with pytest.raises(ValueError, match="^--processors: unknown name 'top_q'"):
        app.parse_processors(["top_q=0.5"])
    with pytest.raises(ValueError, match="'top_k' given twice"):
        app.parse_pairs(["top_k=1", "top_k=2"], "--processors")
    cfg = app.train_config({}, 200)
    assert (cfg.steps, cfg.warmup_steps, cfg.eval_every, cfg.lr) == (200, 10, 20, app.TRAIN_DEFAULTS["lr"])


# ----------------------------------------------------------------------------- pictures and sound


def test_image_grid_places_every_image_exactly():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, (5, 3, 4, 6))
    grid = app.image_grid(x, 5, scale=2, pad=1)
    assert grid.shape == (2 * (8 + 1) + 1, 3 * (12 + 1) + 1, 3)  # 5 images: 3 columns, 2 rows
    for k in range(5):
        r, c = divmod(k, 3)
        cell = grid[1 + r * 9: 1 + r * 9 + 8, 1 + c * 13: 1 + c * 13 + 12]
        assert np.array_equal(cell[::2, ::2], x[k].transpose(1, 2, 0) / 4)
        assert np.array_equal(cell[1::2, 1::2], cell[::2, ::2])  # pixel repetition
    assert np.all(grid[1 + 9: 1 + 17, 1 + 2 * 13: 1 + 2 * 13 + 12] == 0.5)  # the empty sixth cell
    grey = app.image_grid(x[:1, :1], 5, scale=1, pad=0, invert=True)
    assert np.array_equal(grey[:, :, 0], 1 - x[0, 0] / 4) and np.array_equal(grey[:, :, 2], grey[:, :, 0])
    with pytest.raises(ValueError, match="images: expected integers in"):
        app.image_grid(x, 4)


def test_png_round_trips_the_grid(tmp_path):
    from matplotlib.image import imread

    x = data.digits("validation", 7)
    path = app.write_image_grid(x, data.DIGIT_LEVELS, tmp_path / "g.png", invert=True)
    assert path.read_bytes()[:8] == PNG
    back = imread(path)[:, :, :3]
    want = app.image_grid(x, data.DIGIT_LEVELS, invert=True)
    assert back.shape == want.shape and np.max(np.abs(back - want)) <= 1 / 255 + 1e-6  # 8 bits


def test_wav_holds_the_decoded_clips(tmp_path):
    codes = data.tones("train", 2, length=300)
    path = app.write_wav(codes, tmp_path / "t.wav", gap=0.01)
    with wave.open(str(path), "rb") as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 16000, 760)
        pcm = np.frombuffer(f.readframes(760), dtype="<i2")
    assert path.read_bytes()[:4] == b"RIFF" and path.read_bytes()[8:12] == b"WAVE"
    want = np.rint(data.mu_law_decode(codes) * 32767)
    assert np.array_equal(pcm[:300], want[0]) and np.array_equal(pcm[460:], want[1])
    assert not pcm[300:460].any()  # 10 ms of silence between the clips


def test_loss_curves_png(tmp_path):
    s = {"model": "gpt", "data": "stdlib-bytes", "metric": "bits/byte", "val_metric": 3.0,
         "history": {"step": list(range(1, 41)), "loss": list(np.linspace(5, 2, 40)), "eval_step": [20, 40],
                     "val_loss": [3.0, 2.5]}}  # fmt: skip
    path = app.plot_loss_curves([s, dict(s, model="gated")], tmp_path / "c.png")
    assert path.read_bytes()[:8] == PNG
