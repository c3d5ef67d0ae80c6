"""The `chainrule` command.

    chainrule verify [--module NAME] [--backend NAME] [--json PATH] [--full] [--quick]
        the conformance table: reference vs fast on every available backend; progress
        as modules run, then a module x backend summary (--full: every row) and every
        failure in full; --quick: each module's representative rows on the CPU backends
        (seconds); exit status 1 if any check fails.
    chainrule --version
    chainrule bench [TOPIC] [--repeats N] [--warmup N] [--out PATH] [--quick] [--list]
        timings of fast vs reference vs peers, side by side in one run; JSON out.
    chainrule picture NAME PATH
        draw a picture measured from the models (blind-spot: PixelCNN's receptive field
        with its blind spot next to Gated PixelCNN's complete one) into a PNG.
    chainrule train MODEL --data NAME [--config KEY=VALUE ...] [--steps N] [--out DIR]
    chainrule sample DIR [--n N] [--processors ...] [--out PATH]
    chainrule demo [--out DIR] [--quick]
        the application layer (chainrule/cli_app.py): train a model on embedded data,
        sample from a run, the five-minute tour.
    chainrule check PATH [--dtype D] [--device DEV] [--json PATH]
    chainrule export RUN --to hf DIR [--force]
        the oracle for your own model (chainrule/cli_check.py): a HF GPT-2 directory or a run
        against the float64 reference; a run written as a transformers directory.
"""

from __future__ import annotations

import argparse
import sys

from chainrule.cli_app import APP_COMMANDS, add_app_commands, run_app_command
from chainrule.cli_check import CHECK_COMMANDS, add_check_commands, run_check_command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chainrule", description="The correctness oracle for autoregressive models.")
    p.add_argument("--version", action="version", version=f"chainrule {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="conformance table: reference vs fast on every available backend")
    v.add_argument("--module", action="append", help="only this module (repeatable); default: all")
    v.add_argument("--backend", action="append", help="only this backend (repeatable); default: all")
    v.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    v.add_argument("--list", action="store_true", help="list modules and backends, then exit")
    v.add_argument("--full", action="store_true", help="print every row (default: a module x backend summary)")
    v.add_argument("--quick", action="store_true",
                   help="each module's representative rows, on torch-cpu-f64 and torch-cpu-f32 unless --backend")
    b = sub.add_parser("bench", help="timings: fast vs reference vs peers, in one run")
    b.add_argument("topic", nargs="?", help="topic to run; default: all topics")
    b.add_argument("--repeats", type=int, help="timed calls per contender (default: the topic's, 3-5; 2 with --quick)")
    b.add_argument("--warmup", type=int, help="untimed calls first (default 1)")
    b.add_argument("--out", metavar="PATH", help="JSON output (default bench-results/TOPIC.json)")
    b.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    b.add_argument("--list", action="store_true", help="list topics, then exit")
    pic = sub.add_parser("picture", help="draw a picture measured from the models into a PNG")
    pic.add_argument("name", choices=sorted(PICTURES), help="which picture")
    pic.add_argument("path", help="output PNG path")
    add_app_commands(sub)
    add_check_commands(sub)
    return p


PICTURES = {"blind-spot": "blind_spot_picture"}  # name -> function of chainrule.pictures


def _version() -> str:
    """The installed distribution's version, else the package's own `__version__`."""
    from importlib import metadata

    try:
        return metadata.version("chainrule")
    except metadata.PackageNotFoundError:
        from chainrule import __version__

        return __version__


def _picture(args) -> int:
    import os

    from chainrule import pictures

    folder = os.path.dirname(os.path.abspath(args.path))
    if not os.path.isdir(folder):
        return _error("picture", f"PATH: folder {folder!r} does not exist")
    print(getattr(pictures, PICTURES[args.name])(args.path))
    return 0


def _error(command: str, message: str) -> int:
    print(f"chainrule {command}: error: {message}", file=sys.stderr)
    return 2


def _verify(args) -> int:
    from chainrule import verify
    from chainrule.fast import backend as fb

    verify.load_checks()

    if args.list:
        print("modules:  " + " ".join(verify.CHECKS))
        for b in fb.ALL_BACKENDS:
            ok, reason = fb.available(b)
            print(f"backend   {b.name:<16} {'available' if ok else 'unavailable: ' + reason}")
        return 0
    names = [b.name for b in fb.ALL_BACKENDS]
    for m in args.module or ():
        if m not in verify.CHECKS:
            return _error("verify", f"unknown module {m!r}; known modules: {', '.join(verify.CHECKS)}")
    for n in args.backend or ():
        if n not in names:
            return _error("verify", f"unknown backend {n!r}; known backends: {', '.join(names)}")
    for n in args.backend or ():  # asked for by name: being unable to check it is an error
        ok, reason = fb.available(next(b for b in fb.ALL_BACKENDS if b.name == n))
        if not ok:
            return _error("verify", f"backend {n!r} is not available here: {reason}")
    return verify.main(args.module, args.backend, args.json, full=args.full, quick=args.quick)


def _bench(args) -> int:
    from chainrule import bench

    bench.load_topics()
    if args.list:
        for name, (_, help, _) in bench.TOPICS.items():
            print(f"{name:<14} {help}")
        return 0
    if args.topic is not None and args.topic not in bench.TOPICS:
        return _error("bench", f"unknown topic {args.topic!r}; known topics: {', '.join(bench.TOPICS)}")
    if args.repeats is not None and args.repeats < 1:
        return _error("bench", f"--repeats: expected >= 1, got {args.repeats}")
    if args.warmup is not None and args.warmup < 0:
        return _error("bench", f"--warmup: expected >= 0, got {args.warmup}")
    topics = [args.topic] if args.topic else list(bench.TOPICS)
    if args.out and len(topics) > 1:
        return _error("bench", "--out names one JSON file: give a TOPIC too")
    for name in topics:
        bench.run_topic(name, repeats=args.repeats, warmup=args.warmup, quick=args.quick, out=args.out)
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in APP_COMMANDS:
        return run_app_command(args)
    if args.command in CHECK_COMMANDS:
        return run_check_command(args)
    return {"verify": _verify, "bench": _bench, "picture": _picture}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
