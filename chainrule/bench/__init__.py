"""`chainrule bench`: one timing harness, topics registered by the modules of this package
(chainrule/bench/gpt.py, chainrule/bench/sampling.py, ...; `load_topics` imports them all).

A topic is a function that receives a `Run` and times its contenders side by
side in that one run (same process, same threads, same inputs):

    @topic("gpt-forward", "reference vs fast GPT forward")
    def gpt_forward(run):
        run.time("B=4 T=64", "fast float64", lambda: ..., work=B * T, unit="tokens", baseline=True)
        run.time("B=4 T=64", "reference", lambda: ...)

Each contender is called `warmup` times untimed, then `repeats` times timed
(`Run.race` interleaves the repeats of several contenders, so that a change in
machine load hits them alike); the table reports the median, the spread ((max - min) / median) and the ratio
of its median to the case's baseline. Topics may add notes (derived numbers,
agreement checks) and a summary table. Results go to JSON
(bench-results/TOPIC.json by default). Timings never appear in tests.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TOPICS: dict[str, tuple[Callable, str, int]] = {}


def topic(name: str, help: str, repeats: int = 5):
    """Decorator: register `fn(run: Run) -> None` as bench topic `name` (`repeats`: its default)."""

    def decorate(fn):
        if name in TOPICS:
            raise ValueError(f"topic: {name!r} is already registered")
        TOPICS[name] = (fn, help, repeats)
        return fn

    return decorate


@dataclass
class Timing:
    case: str
    name: str
    seconds: list[float]
    work: float | None = None  # units of work per call (tokens, ...) -> a rate
    unit: str | None = None
    baseline: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the timed repeats."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.median > 0 else 0.0

    @property
    def rate(self) -> float | None:
        return None if self.work is None else self.work / self.median

    def as_dict(self) -> dict:
        return {"case": self.case, "name": self.name, "seconds": self.seconds, "median_s": self.median,
                "spread": self.spread, "work": self.work, "unit": self.unit, "rate_per_s": self.rate,
                "baseline": self.baseline}  # fmt: skip


def _sync():
    """Wait for queued GPU work (timings must include it)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class Run:
    """The state of one topic's run: settings in, timings, notes and summary out."""

    topic: str
    repeats: int = 5
    warmup: int = 1
    quick: bool = False
    timings: list[Timing] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    summaries: list[tuple[str, list[str], list[list]]] = field(default_factory=list)
    log: Callable[[str], None] = print

    def time(self, case: str, name: str, fn: Callable[[], object], *, work: float | None = None,
             unit: str | None = None, baseline: bool = False, repeats: int | None = None,
             warmup: int | None = None) -> Timing:
        """Time fn(): `warmup` untimed calls, then `repeats` timed ones (GPU work synchronized)."""
        repeats = self.repeats if repeats is None else repeats
        warmup = self.warmup if warmup is None else warmup
        if repeats < 1 or warmup < 0:
            raise ValueError(f"repeats, warmup: expected >= 1 and >= 0, got {repeats}, {warmup}")
        for _ in range(warmup):
            fn()
        _sync()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync()
            seconds.append(time.perf_counter() - start)
        t = Timing(case, name, seconds, work, unit, baseline)
        self.timings.append(t)
        rate = f", {t.rate:,.1f} {unit}/s" if t.rate is not None and unit else ""
        self.log(f"  {case:>14} | {name:<28} median {_fmt_s(t.median)} (spread {t.spread:.0%}){rate}")
        return t

    def race(self, case: str, contenders: list[tuple[str, Callable[[], object]]], *, work: float | None = None,
             unit: str | None = None) -> list[Timing]:
        """Time several contenders interleaved: all warm up, then each repeat times every
        contender once in turn, so a drift in machine load hits them alike. The first
        contender is the case's baseline."""
        for _ in range(self.warmup):
            for _, fn in contenders:
                fn()
        _sync()
        seconds = {name: [] for name, _ in contenders}
        for _ in range(self.repeats):
            for name, fn in contenders:
                start = time.perf_counter()
                fn()
                _sync()
                seconds[name].append(time.perf_counter() - start)
        timings = []
        for i, (name, _) in enumerate(contenders):
            t = Timing(case, name, seconds[name], work, unit, baseline=i == 0)
            self.timings.append(t)
            timings.append(t)
            rate = f", {t.rate:,.1f} {unit}/s" if t.rate is not None and unit else ""
            self.log(f"  {case:>14} | {name:<28} median {_fmt_s(t.median)} (spread {t.spread:.0%}){rate}")
        return timings

    def note(self, key: str, value) -> None:
        """A derived number or observation, stored in the JSON and printed."""
        self.notes[key] = value
        self.log(f"  note: {key} = {value}")

    def record(self, key: str, value) -> None:
        """Machine-readable results for the JSON only (not printed)."""
        self.notes[key] = value

    def summary(self, title: str, headers: list[str], rows: list[list]) -> None:
        """A topic-specific table printed after the timings (e.g. tokens/s and roofline)."""
        self.summaries.append((title, headers, rows))


def _fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:8.3f} s "
    if s >= 1e-3:
        return f"{s * 1e3:8.3f} ms"
    return f"{s * 1e6:8.3f} us"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def text_table(headers: list[str], rows: list[list], left: int = 1) -> str:
    """Aligned text: the first `left` columns left-justified, the rest right-justified."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(headers), "-" * len(line(headers))] + [line(r) for r in cells])


def timing_table(timings: list[Timing]) -> str:
    """case | contender | median | spread | rate | time / baseline."""
    base = {t.case: t.median for t in timings if t.baseline}
    rows = []
    for t in timings:
        ratio = f"{t.median / base[t.case]:.2f}x" if t.case in base else ""
        rate = f"{t.rate:,.1f} {t.unit}/s" if t.rate is not None and t.unit else ""
        rows.append([t.case, t.name, _fmt_s(t.median).strip(), f"{t.spread:.0%}", rate, ratio])
    return text_table(["case", "contender", "median", "spread", "rate", "time / baseline"], rows, left=2)


def environment() -> dict:
    import numpy
    import torch

    return {"torch": torch.__version__, "numpy": numpy.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.platform(), "processor": platform.processor(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}  # fmt: skip


def run_topic(name: str, *, repeats: int | None = None, warmup: int | None = None, quick: bool = False,
              out: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Run one topic, print its tables, write its JSON (to `out`, default bench-results/NAME.json)."""
    load_topics()
    if name not in TOPICS:
        raise ValueError(f"topic: expected one of {sorted(TOPICS)}, got {name!r}")
    fn, help, default_repeats = TOPICS[name]
    run = Run(name, repeats=repeats if repeats is not None else (2 if quick else default_repeats),
              warmup=warmup if warmup is not None else 1, quick=quick, log=log)  # fmt: skip
    log(f"== bench {name}{' (quick)' if quick else ''}: {help}")
    start = time.perf_counter()
    fn(run)
    seconds = time.perf_counter() - start
    log("")
    log(timing_table(run.timings))
    for title, headers, rows in run.summaries:
        log("")
        log(title)
        log(text_table(headers, rows))
    doc = {"topic": name, "description": help, "quick": quick, "repeats": run.repeats, "warmup": run.warmup,
           "seconds": seconds, "environment": environment(), "timings": [t.as_dict() for t in run.timings],
           "notes": run.notes,
           "summaries": [{"title": t, "headers": h, "rows": r} for t, h, r in run.summaries]}  # fmt: skip
    out = out or os.path.join("bench-results", f"{name}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, default=float)
        f.write("\n")
    log(f"wrote {out}")
    return doc


def load_topics() -> None:
    """Import every module of this package (chainrule/bench/*.py): each registers its topics
    on import, so a new module adds its topics without editing a list."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
