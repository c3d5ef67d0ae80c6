"""`chainrule verify` rows for the logits processors and samplers (module "sampling"):
reference.sampling vs fast.sampling (on CuPy: the reference itself).

Four kinds of logits (random with a -inf column, tie-heavy, -inf-heavy, |x| ~ 1e4): kept
sets of every filter exactly; under the tolerance table the values of the rescaling
processors and of the history processors (penalties, n-gram and bad-word bans, biases, length
constraints, forced and suppressed tokens, on token histories with repeats); tokens drawn
after the whole processor chain from shared uniforms exactly; and the sampler's distribution
(chi-square goodness of fit).
"""

from __future__ import annotations

import functools

import numpy

from chainrule.verify import Result, register

SAMPLING_SHAPE = (3, 59)
SAMPLING_SEED = 4321
SAMPLING_FILTERS = (
    ("top_k", {"k": 5}),
    ("top_k", {"k": 3, "min_tokens_to_keep": 7}),
    ("top_p", {"p": 0.9}),
    ("top_p", {"p": 0.4, "min_tokens_to_keep": 3}),
    ("typical", {"mass": 0.9}),
    ("typical", {"mass": 0.3, "min_tokens_to_keep": 2}),
    ("min_p", {"p": 0.05}),
    ("epsilon", {"eps": 0.02}),
    ("eta", {"eps": 0.02}),
)  # fmt: skip
SAMPLING_CHAIN = {"static_repetition_penalty": {"penalty": 1.2}, "temperature": 0.8, "top_k": 20, "top_p": 0.95,
                  "min_p": 0.01, "typical": 0.97, "epsilon": 1e-4, "eta": 1e-4}  # fmt: skip
# The processors that read the history (and two that do not), on ids with repeats: (name, settings).
SAMPLING_HISTORY_IDS = (3, 10)  # rows x tokens so far, ids in [0, 12)
SAMPLING_HISTORY = (
    ("repetition_penalty", {"penalty": 1.3}),
    ("frequency_penalty", {"penalty": 0.4, "prompt_length": 2}),
    ("presence_penalty", {"penalty": -0.3, "prompt_length": 2}),
    ("no_repeat_ngram", {"n": 2}),
    ("bad_words", {"bad_words_ids": [[5], [3, 7], [2, 2, 9]]}),
    ("sequence_bias", {"sequence_bias": {(4,): -1.5, (3, 8): 2.0}}),
    ("min_new_tokens", {"prompt_length": 4, "min_new_tokens": 9, "eos_token_id": [0, 1]}),
    ("forced_eos", {"max_length": 11, "eos_token_id": 2}),
    ("exponential_decay_length_penalty", {"start_index": 1, "decay_factor": 1.3, "prompt_length": 2,
                                          "eos_token_id": 0}),
    ("begin_suppress_tokens", {"tokens": [1, 2], "begin_index": 10}),
    ("suppress_tokens", {"tokens": [3, 4]}),
    ("logit_bias", {"bias": {5: 2.0, 7: -1.0}}),
)  # fmt: skip
SAMPLING_DRAWS = 400  # rows of apply-then-sample, one shared uniform each
SAMPLING_GOF_N = 20000  # draws for the goodness-of-fit row
SAMPLING_GOF_LOGITS = (0.5, -1.0, 2.0, -numpy.inf, 0.0, 1.5, -3.0)  # one token of probability 0
BOUNDARY = 1e-12  # a draw whose u lies this close to a cdf boundary may go either way: not compared


def sampling_kinds(rng, shape) -> dict:
    """Logits of four kinds: random (a -inf column), tie-heavy (few distinct values, whole rows
    equal), -inf-heavy (80% -inf), |logit| ~ 1e4 (ties among huge values too)."""
    B, V = shape
    random = rng.normal(0.0, 2.0, size=shape)
    random[:, 3] = -numpy.inf
    ties = rng.integers(-2, 2, size=shape).astype(numpy.float64)
    ties[::2] = 0.0
    inf_heavy = numpy.where(rng.random(shape) < 0.8, -numpy.inf, rng.normal(0.0, 1.0, size=shape))
    inf_heavy[numpy.arange(B), rng.integers(0, V, size=B)] = 0.5
    huge = rng.normal(0.0, 1e4, size=shape)
    huge[:, : V // 2] = numpy.round(huge[:, : V // 2], -3)
    return {"random": random, "tie-heavy": ties, "-inf-heavy": inf_heavy, "|x|~1e4": huge}


@functools.cache
def _sampling_case() -> dict:
    rng = numpy.random.default_rng(SAMPLING_SEED)
    kinds = sampling_kinds(rng, SAMPLING_SHAPE)
    draws = sampling_kinds(rng, (SAMPLING_DRAWS, 13))
    return {"kinds": kinds, "context": rng.integers(0, SAMPLING_SHAPE[1], size=(SAMPLING_SHAPE[0], 9)),
            "draws": {k: draws[k] for k in ("random", "tie-heavy", "-inf-heavy")},
            "draw_context": numpy.array([0, 2, 2, 5]), "u": rng.random(SAMPLING_DRAWS)}  # fmt: skip


class _SamplingSide:
    """The sampling module a backend runs (fast.sampling on torch; the reference on CuPy),
    with conversions from and back to NumPy (floats exactly to float64)."""

    def __init__(self, backend):
        self.backend = backend
        if backend.kind == "cupy":
            import cupy

            from chainrule.reference import sampling

            self.cp, self.sampling = cupy, sampling
        else:
            import torch

            from chainrule.fast import sampling

            self.cp, self.torch, self.sampling = None, torch, sampling

    def array(self, a, float64=False):
        a = numpy.asarray(a)
        if self.cp is not None:
            return self.cp.asarray(a)
        torch = self.torch
        if a.dtype.kind in "iu":
            return torch.as_tensor(a, dtype=torch.int64, device=self.backend.device)
        dtype = torch.float64 if float64 else self.backend.torch_dtype
        return torch.as_tensor(a, device=self.backend.device).to(dtype)

    def numpy(self, a):
        from chainrule.reference import checks

        if self.cp is not None:
            return a.get()
        if a.is_floating_point():
            return checks.as_float64(a)
        return a.detach().cpu().numpy()

    def seen(self, x):
        """The logits as the backend holds them (rounded to its dtype), back in float64."""
        return self.numpy(self.array(x))


@register("sampling")
def sampling_checks(backend, quick=False):
    """Logits processors and samplers (reference.sampling vs fast.sampling) on one backend: kept
    sets exactly, rescaled values under the tolerance table, sampled tokens exactly from shared
    uniforms, and the sampler's distribution (chi-square). quick: kept sets and values."""
    from chainrule.reference import checks
    from chainrule.reference import sampling as ref

    case, side, dtype = _sampling_case(), _SamplingSide(backend), backend.dtype
    kinds = case["kinds"]
    seen = {k: side.seen(x) for k, x in kinds.items()}
    # kept sets: decided in float64 on the logits the backend holds, so exactly the reference's
    for name, kwargs in SAMPLING_FILTERS:
        differing, entries = 0, 0
        for k, x in kinds.items():
            want = getattr(ref, "keep_" + name)(seen[k], **kwargs)
            got = side.numpy(getattr(side.sampling, "keep_" + name)(side.array(x), **kwargs))
            differing += int((got != want).sum()) if got.shape == want.shape else want.size
            entries += want.size
        args = ", ".join(f"{a}={v}" for a, v in kwargs.items())
        yield Result(f"kept set {name}({args})", differing, 0, differing == 0,
                     f"differing mask entries of {entries} ({len(kinds)} kinds of logits)")  # fmt: skip
    # values of the rescaling processors, under the tolerance table
    for t in (0.3, 2.5):
        truth = numpy.concatenate([ref.temperature(seen[k], t) for k in kinds])
        got = numpy.concatenate([side.numpy(side.sampling.temperature(side.array(x), t)) for x in kinds.values()])
        yield checks.compare(f"temperature({t}) values", truth, got, dtype)
    for penalty in (0.7, 1.3):
        context = case["context"]
        truth = numpy.concatenate([ref.repetition_penalty(seen[k], context, penalty) for k in kinds])
        penalized = [side.sampling.repetition_penalty(side.array(x), side.array(context), penalty) for x in kinds.values()]
        got = numpy.concatenate([side.numpy(y) for y in penalized])
        yield checks.compare(f"repetition_penalty({penalty}) values", truth, got, dtype)
    # the processors of the history (generate's protocol: logits and the tokens so far)
    ids = numpy.random.default_rng(SAMPLING_SEED + 2).integers(0, 12, SAMPLING_HISTORY_IDS)
    for name, settings in SAMPLING_HISTORY:
        history = (ids,) if name in ref.HISTORY else ()
        truth = numpy.concatenate([ref.PROCESSORS[name](seen[k], *history, **settings) for k in kinds])
        got = numpy.concatenate([side.numpy(side.sampling.PROCESSORS[name](side.array(x), *map(side.array, history),
                                                                             **settings)) for x in kinds.values()])  # fmt: skip
        yield checks.compare(f"{name} values", truth, got, dtype)
    if quick:
        return
    from scipy import stats

    # apply then sample: the reference's token from the same u, for the logits the backend produced
    u = case["u"]
    spec = dict(SAMPLING_CHAIN, static_repetition_penalty=dict(SAMPLING_CHAIN["static_repetition_penalty"],
                                                        context=case["draw_context"]))  # fmt: skip
    mismatched, compared, logits_off = 0, 0, 0
    for k, x in case["draws"].items():
        got_logits_b = side.sampling.apply(side.array(x), spec)
        got_logits = side.numpy(got_logits_b)
        want_logits = ref.apply(side.seen(x), spec)
        if dtype == "float64":  # the chain is not continuous: its kept sets are compared in float64 only
            logits_off += int((numpy.isneginf(got_logits) != numpy.isneginf(want_logits)).sum())
        want = ref.sample(got_logits, u)
        got = side.numpy(side.sampling.sample(got_logits_b, side.array(u, float64=True)))
        margin = numpy.min(numpy.abs(numpy.cumsum(ref.probs(got_logits), axis=-1) - u[:, None]), axis=-1)
        clear = margin >= BOUNDARY
        mismatched += int((got[clear] != want[clear]).sum())
        if dtype == "float64":
            mismatched += int((got[clear] != ref.sample(want_logits, u)[clear]).sum())
        compared += int(clear.sum())
    total = SAMPLING_DRAWS * len(case["draws"])
    yield Result("sampled tokens after apply (shared u)", mismatched + logits_off, 0,
                 mismatched + logits_off == 0 and compared >= 0.95 * total,
                 f"{compared} of {total} draws compared (u within {BOUNDARY:g} of a cdf boundary skipped)"
                 + (f"; {logits_off} kept-set entries of apply differ" if logits_off else ""))  # fmt: skip
    # the sampler's distribution: chi-square goodness of fit of n draws
    logits = numpy.array(SAMPLING_GOF_LOGITS)
    probs = ref.probs(side.seen(logits))
    rows = side.array(numpy.broadcast_to(logits, (SAMPLING_GOF_N, logits.size)).copy())
    gof_rng = numpy.random.default_rng(SAMPLING_SEED + 1)
    fit = checks.sampler_goodness_of_fit(
        lambda n: side.numpy(side.sampling.sample(rows[:n], side.array(gof_rng.random(n), float64=True))), probs,
        SAMPLING_GOF_N)  # fmt: skip
    critical = float(stats.chi2.ppf(1 - fit.alpha, fit.dof)) if fit.dof > 0 else 0.0
    yield Result(f"sampler goodness of fit (chi-square, n={SAMPLING_GOF_N})", fit.statistic, critical, fit.passed,
                 f"p = {fit.p_value:.3g} >= alpha {fit.alpha:g} on {fit.dof} dof; {fit.impossible} draws of "
                 f"probability-0 tokens")  # fmt: skip
