"""Bench topic for the logits processors.

sampling  fast.sampling's processors vs Hugging Face transformers' logits warpers
          (TopK, TopP, Typical, MinP, Temperature) on the same float32 torch
          logits (batch 64, V 50257; --quick: batch 4, V 1009), with the
          reference (NumPy float64, on the exact float64 upcast of those logits)
          as a third column for scale. Target: fast >= 1.5x HF for top-k, top-p
          and typical. The logits are tie-free (normal, scale 3, no value
          repeated within a row), so the kept sets are comparable: the summary
          reports whether fast keeps exactly the tokens HF keeps (both mask with
          -inf) and exactly the tokens the reference keeps -- reported, not
          enforced (the diff tests enforce the reference's sets; HF decides in
          float32, fast and reference in float64).
"""

from __future__ import annotations

import numpy

from chainrule.bench import Run, topic

FULL = (64, 50257)
QUICK = (4, 1009)
TARGET = 1.5  # HF time / fast time, for top_k, top_p, typical

# name: (fast/reference kwargs, HF warper class name, HF kwargs)
PROCESSORS = {
    "top_k": ({"k": 50}, "TopKLogitsWarper", {"top_k": 50}),
    "top_p": ({"p": 0.9}, "TopPLogitsWarper", {"top_p": 0.9}),
    "typical": ({"mass": 0.9}, "TypicalLogitsWarper", {"mass": 0.9}),
    "min_p": ({"p": 0.05}, "MinPLogitsWarper", {"min_p": 0.05}),
    "temperature": ({"t": 0.7}, "TemperatureLogitsWarper", {"temperature": 0.7}),
}
TARGETED = ("top_k", "top_p", "typical")


def _hf_warpers():
    """{name: HF warper instance}, or None if transformers is not installed."""
    try:
        from transformers.generation import logits_process
    except ImportError:
        return None
    return {name: getattr(logits_process, cls)(**kw) for name, (_, cls, kw) in PROCESSORS.items()}


def tie_free_logits(rng, B: int, V: int, scale: float = 3.0) -> numpy.ndarray:
    """(B, V) float32 logits ~ normal(0, scale) with V distinct values per row: each repeated
    float32 value (rows of 50257 normals hold a few) is moved up one ulp until none repeats."""
    x = (rng.normal(0.0, scale, size=(B, V))).astype(numpy.float32)
    for row in x:
        while True:
            _, first = numpy.unique(row, return_index=True)
            if first.size == V:
                break
            repeat = numpy.ones(V, dtype=bool)
            repeat[first] = False
            row[repeat] = numpy.nextafter(row[repeat], numpy.float32(numpy.inf))
    return x


def _differing(a, b) -> int:
    """Number of entries where the kept masks (finite entries) of two logits arrays differ."""
    return int((numpy.isfinite(a) != numpy.isfinite(b)).sum())


@topic("sampling", "logits processors on (64, 50257) float32 logits: fast.sampling vs HF warpers vs reference")
def bench_sampling(run: Run) -> None:
    import torch

    from chainrule.fast import backend as fb
    from chainrule.fast import sampling as fs
    from chainrule.reference import sampling as rs

    B, V = QUICK if run.quick else FULL
    rng = numpy.random.default_rng(0)
    x = torch.as_tensor(tie_free_logits(rng, B, V))
    x64 = x.to(torch.float64).numpy()  # exactly the logits fast holds, for the reference
    input_ids = torch.zeros((B, 1), dtype=torch.int64)  # the warpers here ignore it
    hf = _hf_warpers()
    run.note("shape", [B, V])
    run.note("torch_threads", torch.get_num_threads())
    if hf is None:
        run.note("hf", "transformers not installed: HF columns skipped")
    rows, results = [], []
    with torch.inference_mode():
        for name, (kwargs, cls, _) in PROCESSORS.items():
            fast_fn, ref_fn = getattr(fs, name), getattr(rs, name)
            out = {}

            def fast(fast_fn=fast_fn, kwargs=kwargs):
                out["fast"] = fast_fn(x, **kwargs)

            def reference(ref_fn=ref_fn, kwargs=kwargs):
                out["reference"] = ref_fn(x64, **kwargs)

            contenders = [(f"fast.sampling.{name}", fast)]
            if hf is not None:
                warper = hf[name]

                def peer(warper=warper):
                    out["hf"] = warper(input_ids, x)

                contenders.append((f"HF {cls}", peer))
            contenders.append((f"reference.sampling.{name}", reference))
            timings = {n.split(" ")[0].split(".")[0]: t for (n, _), t in zip(contenders, run.race(name, contenders))}
            got = fb.from_torch(out["fast"])
            t_fast, t_ref = timings["fast"].median, timings["reference"].median
            vs_ref = _differing(got, out["reference"]) if name != "temperature" else None
            values_ref = bool(numpy.array_equal(got, out["reference"].astype(numpy.float32).astype(numpy.float64)))
            if hf is not None:
                t_hf = timings["HF"].median
                hf_out = fb.from_torch(out["hf"])
                vs_hf = _differing(got, hf_out)
                speedup = t_hf / t_fast
                same_values_hf = bool(numpy.array_equal(got, hf_out))
            else:
                t_hf = vs_hf = speedup = same_values_hf = None
            kept = float(numpy.isfinite(got).sum(axis=-1).mean())
            met = None if speedup is None or name not in TARGETED else speedup >= TARGET
            rows.append([name, t_fast * 1e3, None if t_hf is None else t_hf * 1e3, t_ref * 1e3,
                         None if speedup is None else f"{speedup:.2f}x", {None: "", True: "yes", False: "NO"}[met],
                         f"{t_ref / t_fast:.1f}x", kept, vs_hf, vs_ref, same_values_hf])  # fmt: skip
            results.append({"processor": name, "kwargs": kwargs, "fast_s": t_fast, "hf_s": t_hf, "reference_s": t_ref,
                            "hf_over_fast": speedup, "target": TARGET if name in TARGETED else None,
                            "target_met": met, "reference_over_fast": t_ref / t_fast, "mean_kept_per_row": kept,
                            "kept_entries_differing_from_hf": vs_hf, "kept_entries_differing_from_reference": vs_ref,
                            "kept_sets_identical_to_hf": None if vs_hf is None else vs_hf == 0,
                            "kept_sets_identical_to_reference": None if vs_ref is None else vs_ref == 0,
                            "outputs_identical_to_hf": same_values_hf,
                            "outputs_identical_to_reference_in_float32": values_ref})  # fmt: skip
    run.summary(
        f"processors on ({B}, {V}) float32 logits (HF speedup = HF time / fast time; target {TARGET}x for "
        f"{', '.join(TARGETED)}; kept-set differences = entries of the (B, V) masks that differ)",
        ["processor", "fast ms", "HF ms", "reference ms", "HF/fast", "target met", "ref/fast", "kept/row",
         "differ vs HF", "differ vs ref", "outputs == HF"],
        rows,
    )  # fmt: skip
    run.record("results", results)
