"""Bench topic `speculative`: speculative decoding against plain generation, next to the theory.

Models: `chainrule.bench.models.trained_gpt_pair` (a byte-level target and a smaller draft trained
on the same text; float32, CPU or the first CUDA device). Prompts: windows of held-out text. Batch 1.

For each mode (greedy: temperature 0 on both models, so p and q are point masses and the output is
the target's greedy decoding token for token; sampled: temperature 1) and each k:

    alpha      the acceptance rate, estimated from the run's acceptance counts: every step tests
               drafts until the first rejection, so alpha_hat = accepted / (accepted + rejections)
               (the maximum-likelihood estimate for a constant alpha)
    tok/fwd    new tokens per target forward (= per speculative step)
    speedup    wall-clock time of fast.gpt.generate / time of fast.speculative.generate, raced
               side by side on the same prompt (same uniforms for the sampled mode)
    theory     reference.speculative.expected_speedup(alpha_hat, k, c) (Leviathan et al. 2023,
               Thm 3.8), c = (time per token of the draft's plain generation) / (the target's),
               with the mode's processors, measured in the same run
    theory'    the same with the measured cost of the target's pass over k + 1 positions, v_k
               target steps, in place of the paper's 1:  E[tokens/step] / (k c + v_k)

Threads: the topic runs with ONE torch thread (restored afterwards). Batch-1 decoding of these small
models is bound by per-operation overhead, not arithmetic; a second thread only adds thread-pool
synchronization, and on a shared machine it makes every timing noise (c swung from 0.07 to 0.43
between two runs with two threads).

Other decoding methods append functions `fn(run, models, quick) -> None` to EXTRA_CASES; each is
called after the speculative cases with the same models (target_config, target_params,
draft_config, draft_params) and may add timings, notes and summaries to the run.
"""

from __future__ import annotations

import numpy

from chainrule.bench import Run, topic

EXTRA_CASES: list = []


def _register_extra_cases() -> None:
    """Medusa, Jacobi and lookahead join this topic's run (same trained target)."""
    from chainrule.bench.medusa import medusa_case
    from chainrule.bench.parallel_decoding import jacobi_case, lookahead_case

    for case in (medusa_case, jacobi_case, lookahead_case):
        if case not in EXTRA_CASES:
            EXTRA_CASES.append(case)

KS, QUICK_KS = (1, 2, 3, 4, 6), (2, 4)
PROMPT, NEW = 32, 56  # within the models' context of 96 with k <= 9: T0 + N + k - 1 <= block_size
QUICK_PROMPT, QUICK_NEW = 16, 24
PROMPT_OFFSETS = (1000, 5000, 9000)  # three windows of held-out text
MODES = {"greedy": [("temperature", {"t": 0.0})], "sampled": []}


def _alpha_hat(accepted: numpy.ndarray, k: int) -> float:
    """accepted / (accepted + rejections), rejections = steps that accepted fewer than k."""
    a = accepted[accepted >= 0]
    total, rejections = int(a.sum()), int((a < k).sum())
    return total / (total + rejections) if total + rejections else 1.0


@topic("speculative", "speculative decoding (trained byte-level target + draft, batch 1): measured alpha, "
       "tokens per target forward and speedup vs fast.gpt.generate, next to expected_speedup(alpha, k, c)",
       repeats=3)  # fmt: skip
def bench_speculative(run: Run) -> None:
    import torch

    from chainrule import data
    from chainrule.bench import models as bench_models
    from chainrule.fast import gpt as fgpt
    from chainrule.fast import sampling as fs
    from chainrule.fast import speculative as fsp
    from chainrule.reference import speculative as sp

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module docstring; restored below
    try:
        _bench(run, torch, bench_models, data, fgpt, fs, fsp, sp)
    finally:
        torch.set_num_threads(threads)


def _bench(run, torch, bench_models, data, fgpt, fs, fsp, sp) -> None:
    quick = run.quick
    tc, tp, dc, dp = bench_models.trained_gpt_pair(quick=quick)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tp = {k: v.to(device=device, dtype=torch.float32) for k, v in tp.items()}
    dp = {k: v.to(device=device, dtype=torch.float32) for k, v in dp.items()}
    ks = QUICK_KS if quick else KS
    T0, N = (QUICK_PROMPT, QUICK_NEW) if quick else (PROMPT, NEW)
    text = data.stdlib_bytes(20_000, "validation")
    prompts = [torch.as_tensor(text[o : o + T0][None, :], dtype=torch.int64, device=device) for o in PROMPT_OFFSETS]
    n_new = N * len(prompts)
    run.note("target", {**vars(tc), "parameters": sum(v.numel() for v in tp.values())})
    run.note("draft", {**vars(dc), "parameters": sum(v.numel() for v in dp.values())})
    run.note("device, torch threads", [device, torch.get_num_threads()])
    run.note("prompts (batch 1, one after the other), prompt tokens, new tokens each", [len(prompts), T0, N])

    verify = _verify_costs(run, fsp, tp, tc, prompts[0], ks, N)
    rows, results, cs = [], [], {}
    rng = numpy.random.default_rng(0)
    for mode, spec in MODES.items():
        processors = fs.chain(spec)
        # the cost ratio c: plain generation with this mode's processors, draft vs target, per token
        t_target, t_draft = run.race(f"{mode}: cost ratio c", [
            ("target fast.gpt.generate", lambda: [fgpt.generate(tp, tc, x, N, processors=processors) for x in prompts]),
            ("draft fast.gpt.generate", lambda: [fgpt.generate(dp, dc, x, N, processors=processors) for x in prompts]),
        ], work=n_new, unit="tokens")  # fmt: skip
        c = cs[mode] = t_draft.median / t_target.median
        u_plain = [rng.random((1, N)) if mode == "sampled" else None for _ in prompts]
        plain_out = [fgpt.generate(tp, tc, x, N, processors=processors, u=v) for x, v in zip(prompts, u_plain)]
        for k in ks:
            us = [rng.random((1, N, 2 * k + 1)) for _ in prompts]
            out = {}

            def plain():
                for x, v in zip(prompts, u_plain):
                    fgpt.generate(tp, tc, x, N, processors=processors, u=v)

            def spec_run():
                out["spec"] = [fsp.generate((tp, tc), (dp, dc), x, k, N, u=v, processors=processors)
                               for x, v in zip(prompts, us)]  # fmt: skip

            t_plain, t_spec = run.race(f"{mode} k={k}", [("fast.gpt.generate", plain),
                                                         ("fast.speculative.generate", spec_run)],
                                       work=n_new, unit="tokens")  # fmt: skip
            acc = numpy.concatenate([a.cpu().numpy()[0] for _, a in out["spec"]])
            steps = int((acc >= 0).sum())
            alpha = _alpha_hat(acc, k)
            speedup = t_plain.median / t_spec.median
            theory = sp.expected_speedup(alpha, k, c)
            with_verify = sp.expected_tokens_per_step(alpha, k) / (k * c + verify[k])
            same = all(bool((o[0] == g).all()) for o, g in zip(out["spec"], plain_out)) if mode == "greedy" else None
            rows.append([mode, k, alpha, n_new / steps, sp.expected_tokens_per_step(alpha, k), speedup, theory,
                         f"{speedup / theory - 1:+.0%}", with_verify, f"{speedup / with_verify - 1:+.0%}",
                         "yes" if same else ("-" if same is None else "NO")])  # fmt: skip
            results.append({"mode": mode, "k": k, "alpha": alpha, "steps": steps, "new_tokens": n_new,
                            "tokens_per_target_forward": n_new / steps, "speedup": speedup, "theory": theory,
                            "theory_with_verify_cost": with_verify, "c": c, "verify_cost": verify[k],
                            "greedy_identical": same})  # fmt: skip
    run.note("c = draft time / target time per token (plain generation), per mode",
             {m: round(v, 4) for m, v in cs.items()})  # fmt: skip
    run.summary(
        f"speculative decoding, batch 1, {len(prompts)} prompts x {N} new tokens, c = "
        + ", ".join(f"{v:.3f} ({m})" for m, v in cs.items()) + " (measured). "
        "speedup = plain time / speculative time; theory = expected_speedup(alpha, k, c) = E[tokens/step] / "
        "(k c + 1); theory' = E[tokens/step] / (k c + v_k), v_k = measured cost of the target's (k+1)-token "
        "pass in target steps",
        ["mode", "k", "alpha", "tok/target fwd", "E tok/step", "speedup", "theory", "vs theory", "theory'",
         "vs theory'", "= greedy"],
        rows,
    )  # fmt: skip
    run.record("results", results)
    models = (tc, tp, dc, dp)
    _register_extra_cases()
    for extra in EXTRA_CASES:
        extra(run, models, quick)


def _verify_costs(run: Run, fsp, tp, tc, prompt, ks, N) -> dict:
    """v_k = time of the target's pass over k + 1 new positions / time of a one-token pass, both with
    the kernels speculative generation runs (fast.speculative's model: cache write, all logits,
    float64 probabilities), after a cache holding the prompt plus half the new tokens."""
    import torch

    T0 = prompt.shape[1]
    model = fsp._Model(tp, tc, 1, T0 + N + max(ks), (), "target")
    context = torch.cat([prompt, prompt[:, : N // 2 + 1].flip(1)], dim=1)  # a plausible longer context
    with torch.inference_mode():
        model.feed(context, numpy.zeros(1, dtype=numpy.int64))
    P = numpy.full(1, context.shape[1])
    costs = {}
    for k in ks:
        chunk = context[:, -(k + 1) :]

        def one():
            with torch.inference_mode():
                model.probs(chunk[:, :1], P)

        def many():
            with torch.inference_mode():
                model.probs(chunk, P)

        t_one, t_many = run.race(f"verify cost k={k}", [("target pass (1 token)", one),
                                                       (f"target pass ({k + 1} tokens)", many)])  # fmt: skip
        costs[k] = t_many.median / t_one.median
    run.note("v_k = target (k+1)-token pass / one-token pass", {k: round(v, 3) for k, v in costs.items()})
    return costs
