"""The oracle's commands of `chainrule` (their logic is chainrule.check; families: chainrule/families/):

    chainrule check PATH [--dtype float32|bfloat16|float16|float64] [--device cpu|cuda]
                         [--family NAME] [--bos-token ID] [--seed S] [--json PATH] [--list]
        check your model against chainrule's float64 reference on the same weights: logits,
        log-likelihood, exact causality, KV cache = recompute, greedy tokens, padding invariance.
        PATH: a HF transformers GPT-2, Llama, Mistral or Qwen2 directory (config.json +
        model.safetensors) or a run of `chainrule train gpt`. Exit status 0: every check passes; 1: one fails; 2: usage or load error.
    chainrule export RUN --to hf DIR [--force]
        write a run as a HF transformers directory (config.json, model.safetensors,
        generation_config.json) that AutoModelForCausalLM.from_pretrained(DIR) loads.

`add_check_commands(subparsers)` adds them to an argparse parser; `run_check_command(args)` runs one.
"""

from __future__ import annotations

import argparse
import sys

CHECK_COMMANDS = ("check", "export")


def add_check_commands(subparsers) -> None:
    """Add the check and export subcommands to `subparsers` (from ArgumentParser.add_subparsers)."""
    from chainrule.check import DEVICES, DTYPES

    c = subparsers.add_parser(
        "check", help="check your model (HF GPT-2 directory or chainrule run) against the float64 reference",
        description="Check a model against chainrule's float64 reference on the same weights: logits and "
        "log-likelihood under the tolerance table, exact causality, KV cache = recompute, greedy tokens, "
        "padding invariance. "
        "Exit status 0 if every check passes, 1 if one fails, 2 on a usage or load error.",
    )  # fmt: skip
    c.add_argument("path", nargs="?", metavar="PATH",
                   help="a HF transformers model directory (config.json + model.safetensors) or a chainrule run")
    c.add_argument("--dtype", choices=DTYPES, help="precision of the model under test (default: the checkpoint's)")
    c.add_argument("--device", choices=DEVICES, default="cpu", help="device of the model under test (default cpu)")
    c.add_argument("--family", help="the model family, instead of detecting it (see --list)")
    c.add_argument("--bos-token", type=int, metavar="ID",
                   help="token prepended for the log-likelihood (default: the model's bos token)")
    c.add_argument("--seed", type=int, default=0, help="seed of the test inputs (default 0)")
    c.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    c.add_argument("--list", action="store_true", help="list the model families, then exit")

    e = subparsers.add_parser(
        "export", help="write a chainrule run in another format (hf: a transformers directory)",
        description="Write a chainrule run in another format. --to hf: config.json, model.safetensors and "
        "generation_config.json, which transformers.AutoModelForCausalLM.from_pretrained(DIR) loads as "
        "GPT2LMHeadModel with the run's weights, unrounded. Exit status 2 on a usage error.",
    )  # fmt: skip
    e.add_argument("run", metavar="RUN", help="a run directory written by chainrule train")
    e.add_argument("dir", metavar="DIR", help="the output directory (created; must be empty unless --force)")
    e.add_argument("--to", required=True, metavar="FORMAT", help="output format: hf")
    e.add_argument("--force", action="store_true", help="write into a non-empty DIR (replacing the files written)")
    e.add_argument("--family", help="the run's family, instead of detecting it")


def _error(command: str, message: str) -> int:
    print(f"chainrule {command}: error: {message}", file=sys.stderr)
    return 2


def _check(args) -> int:
    from chainrule import check

    if args.list:
        check.load_families()
        for family in check.FAMILIES.values():
            exports = f"  [export to {', '.join(family.exporters)}]" if family.exporters else ""
            print(f"{family.name:<14} {family.description}{exports}")
        return 0
    if args.path is None:
        return _error("check", "PATH: expected a model directory (or --list)")
    return check.check(args.path, dtype=args.dtype, device=args.device, family=args.family, bos_token=args.bos_token,
                       seed=args.seed, json_path=args.json, out=lambda line: print(line, flush=True))  # fmt: skip


def _export(args) -> int:
    from chainrule import check

    for path in check.export(args.run, args.to, args.dir, force=args.force, family=args.family):
        print(path)
    return 0


def run_check_command(args) -> int:
    """Run the check or export command parsed into `args` -> exit status (2: a usage or load error,
    reported on stderr as `chainrule COMMAND: error: ...`)."""
    handler = {"check": _check, "export": _export}[args.command]
    try:
        return handler(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
        return _error(args.command, str(error))


def main(argv: list[str] | None = None) -> int:
    """These commands alone, as `python -m chainrule.cli_check COMMAND ...`."""
    parser = argparse.ArgumentParser(prog="chainrule")
    add_check_commands(parser.add_subparsers(dest="command", required=True))
    return run_check_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
