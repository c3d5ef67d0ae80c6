"""The application's commands of `chainrule` (their logic is chainrule.app):

    chainrule train MODEL [--data NAME] [--config KEY=VALUE ...] [--steps N] [--out DIR] [--resume]
                          [--device DEV] [--seed S] [--quiet] [--list]
        train a model of chainrule.models on a dataset of chainrule.data with fast.train's loop;
        prints the validation bits/byte (text) or bits/dim (images, audio). KEY: a field of the
        model's Config, "length" (window of a sequence model), or a field of fast.train.TrainConfig.
    chainrule sample DIR [--n N] [--processors NAME=VALUE ...] [--seed S] [--length L] [--out PATH]
        samples of a trained run: text to stdout (or PATH), images to a PNG grid, audio to a WAV
        file (default PATH: DIR/samples.png or DIR/samples.wav).
    chainrule demo [--out DIR] [--quick]
        a small GPT on the standard library's bytes and a small class-conditional Gated PixelCNN
        on digits, trained on the CPU (about 4.5 minutes on 2 cores; progress printed as it goes),
        with samples, loss curves and a summary. --quick: a smoke test in seconds, whose pictures
        are labelled as such (a few steps do not make digits).

`add_app_commands(subparsers)` adds them to an argparse parser; `run_app_command(args)` runs one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

APP_COMMANDS = ("train", "sample", "demo")


def add_app_commands(subparsers) -> None:
    """Add the train, sample and demo subcommands to `subparsers` (from ArgumentParser.add_subparsers)."""
    t = subparsers.add_parser("train", help="train a model on an embedded dataset (checkpoint + validation metric)")
    t.add_argument("model", nargs="?", help="model name (see --list)")
    t.add_argument("--data", help="dataset name (default: the model's; see --list)")
    t.add_argument("--config", nargs="+", action="extend", metavar="KEY=VALUE", default=[],
                   help="model, window ('length') or training setting, e.g. n_layer=2 lr=1e-3 batch_size=16")
    t.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/MODEL-DATA)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out DIR")
    t.add_argument("--device", help="cpu (default), cuda, cuda:1")
    t.add_argument("--seed", type=int, default=0, help="seed of the initialization and of the batches (default 0)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--list", action="store_true", help="list models and datasets, then exit")

    s = subparsers.add_parser("sample", help="sample from a trained run: text, PNG grid or WAV")
    s.add_argument("dir", metavar="DIR", help="a run directory written by chainrule train")
    s.add_argument("--n", type=int, default=None, help="number of samples (default 4 sequences, 16 images)")
    s.add_argument("--processors", nargs="+", action="extend", metavar="NAME=VALUE", default=[],
                   help="logits processors and generation settings for sequence models, e.g. temperature=0.8 "
                        "top_k=40 top_p=0.95 repetition_penalty=1.2 no_repeat_ngram=3 eos_token_id=10")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.add_argument("--length", type=int, help="tokens per sequence (default: the run's window length)")
    s.add_argument("--out", metavar="PATH", help="output file (text: default stdout; PNG/WAV: DIR/samples.*)")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda")

    d = subparsers.add_parser("demo", help="train a small GPT and a small Gated PixelCNN, write samples and curves "
                                           "(about 4.5 minutes on 2 CPU cores)")  # fmt: skip
    d.add_argument("--out", metavar="DIR", default="demo", help="output folder (default ./demo)")
    d.add_argument("--quick", action="store_true",
                   help="smoke test: tiny sizes and 8 steps, seconds instead of minutes (the pictures are not digits)")
    d.add_argument("--device", default="cpu", help="cpu (default), cuda")


def _error(command: str, message: str) -> int:
    print(f"chainrule {command}: error: {message}", file=sys.stderr)
    return 2


def _list() -> int:
    from chainrule import data, models

    print("models:")
    for name, description in models.models().items():
        m = models.get(name)
        print(f"  {name:<12} {description}  [{'/'.join(m.kinds)}; default data {m.default_data}]")
    print("datasets:")
    for name, description in data.datasets().items():
        if name != "stdlib-words":
            print(f"  {name:<14} {description}")
    return 0


def _train(args) -> int:
    from chainrule import app, models

    if args.list:
        return _list()
    if not args.model:
        return _error("train", f"MODEL: expected one of {', '.join(models.models())} (or --list)")
    model = models.get(args.model)
    if args.steps is not None and args.steps < 1:
        return _error("train", f"--steps: expected a positive int, got {args.steps}")
    settings = app.parse_pairs(args.config, "--config")
    out = args.out or str(Path("runs") / f"{model.name}-{args.data or model.default_data}")
    summary = app.train_run(model.name, args.data, settings, steps=args.steps, out=out, resume=args.resume,
                            device=args.device, progress=not args.quiet, seed=args.seed)  # fmt: skip
    if app.main_process():
        print(app.summary_line(summary))
    return 0


def _sample(args) -> int:
    from chainrule import app

    processors = app.parse_processors(args.processors)
    app.check_device(args.device)
    run = app.load_run(args.dir)  # errors for a missing run before any sampling
    n = args.n if args.n is not None else (16 if run["kind"] == "image" else 4)
    got = app.sample_run(args.dir, n, processors=processors, seed=args.seed, length=args.length, device=args.device)
    if got["kind"] == "text":
        text = "".join(f"--- sample {i + 1} ---\n{t}\n" for i, t in enumerate(got["text"]))
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
            print(args.out)
        else:
            sys.stdout.write(text)
        return 0
    if got["kind"] == "image":
        path = args.out or str(Path(args.dir) / "samples.png")
        app.write_image_grid(got["samples"], got["levels"], path, invert=got["data"].startswith("digits"))
    else:
        path = args.out or str(Path(args.dir) / "samples.wav")
        app.write_wav(got["samples"], path)
    print(path)
    return 0


def _demo(args) -> int:
    from chainrule import app

    summary = app.demo(args.out, quick=args.quick, device=args.device)  # prints its progress as it goes
    print(f"demo{' --quick' if args.quick else ''}: done in {summary['seconds']:.0f} s; GPT validation "
          f"{summary['gpt_val_bits_per_byte']:.3f} bits/byte, Gated PixelCNN validation "
          f"{summary['gated_val_bits_per_dim']:.3f} bits/dim")  # fmt: skip
    return 0


def run_app_command(args) -> int:
    """Run the train, sample or demo command parsed into `args` -> exit status (2: a usage error,
    reported on stderr as `chainrule COMMAND: error: ...`)."""
    handler = {"train": _train, "sample": _sample, "demo": _demo}[args.command]
    for path in [getattr(args, "out", None)] if args.command == "sample" else []:
        if path and not Path(path).resolve().parent.is_dir():
            return _error(args.command, f"--out: folder {str(Path(path).resolve().parent)!r} does not exist")
    try:
        return handler(args)
    except FileNotFoundError as error:
        return _error(args.command, str(error))
    except (ValueError, TypeError) as error:
        return _error(args.command, str(error))


def main(argv: list[str] | None = None) -> int:
    """These commands alone, as `python -m chainrule.cli_app COMMAND ...`."""
    parser = argparse.ArgumentParser(prog="chainrule")
    add_app_commands(parser.add_subparsers(dest="command", required=True))
    return run_app_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
