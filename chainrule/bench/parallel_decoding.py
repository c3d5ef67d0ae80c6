"""Bench cases for Jacobi and lookahead decoding, run inside `chainrule bench speculative`.

`lookahead_case(run, models, quick)` and `jacobi_case(run, models, quick)` take the bench
`Run` and `models` = chainrule.bench.models.trained_gpt_pair(quick) (the trained byte-level
target comes first; the draft is not used: these methods need none). Batch 1, greedy,
float32 on the CPU (CUDA when the params live there), on a prompt of held-out source
bytes. Each case races plain `fast.gpt.generate` (the baseline) against the parallel
decoder in one run and reports:

    tokens per base forward   new tokens / model calls of the decoding loop (greedy: 1)
    step cost                 time per model call of the decoder / time per greedy token
                              (a multi-token step reads the weights once, but computes more)
    speedup                   median greedy time / median parallel-decoding time
                              (= tokens per base forward / step cost)
    identical                 whether the output equals greedy decoding token for token

Both are exact for greedy in exact arithmetic; in float32 a multi-token step computes the
same logits with other kernels than one-token steps, so a near-tie may flip a token: the
case reports whether the outputs agree rather than asserting it.
"""

from __future__ import annotations

import numpy

LOOKAHEAD_SETTINGS = [dict(window=4, ngram=3, candidates=4), dict(window=3, ngram=5, candidates=3),
                      dict(window=8, ngram=4, candidates=8), dict(window=15, ngram=5, candidates=15)]  # fmt: skip
LOOKAHEAD_QUICK = [dict(window=4, ngram=3, candidates=4)]
JACOBI_BLOCKS = [4, 16, 32]
JACOBI_QUICK = [4]


def _setup(models, quick: bool):
    """(config, params, prompt (1, T0) int64 tensor, new tokens): a held-out prompt filling a quarter
    of the context, and as many new tokens as the rest of the context holds."""
    import torch

    from chainrule import data

    config, params = models[0], models[1]
    T0 = config.block_size // 4
    stream = data.stdlib_bytes(20_000, "validation")
    start = int(numpy.flatnonzero(stream[:-T0] == ord("\n"))[3]) + 1  # start at a line
    device = params["wte"].device
    prompt = torch.as_tensor(stream[start : start + T0][None], dtype=torch.int64, device=device)
    return config, params, prompt, config.block_size + 1 - T0


def _race(run, case, config, params, prompt, n_new, name, decode):
    """Race greedy generate against `decode`; -> a summary row."""
    from chainrule.fast import gpt as fgpt

    greedy = fgpt.generate(params, config, prompt, n_new)
    tokens, stats = decode()
    base, par = run.race(case, [("fast.gpt.generate greedy", lambda: fgpt.generate(params, config, prompt, n_new)),
                               (name, decode)], work=n_new, unit="tokens")  # fmt: skip
    identical = bool((tokens.cpu() == greedy.cpu()).all())
    row = {"method": name, "new_tokens": n_new, "forwards": stats.forwards,
           "tokens_per_forward": stats.tokens_per_forward,
           "step_cost": (par.median / stats.forwards) / (base.median / n_new),
           "speedup": base.median / par.median, "identical_to_greedy": identical}  # fmt: skip
    run.record(f"{case}: {name}", row)
    return row


def _summarize(run, title, rows):
    run.summary(title, ["method", "tokens/forward", "forwards", "step cost", "speedup vs greedy", "= greedy"],
                [[r["method"], r["tokens_per_forward"], r["forwards"], r["step_cost"], r["speedup"],
                  str(r["identical_to_greedy"])] for r in rows])  # fmt: skip


def lookahead_case(run, models, quick: bool):
    """Lookahead decoding (W, N, G) vs plain greedy generation on the trained target -> summary rows."""
    from chainrule.fast import parallel_decoding as fpd

    config, params, prompt, n_new = _setup(models, quick)
    rows = []
    for s in LOOKAHEAD_QUICK if quick else LOOKAHEAD_SETTINGS:
        name = f"lookahead W={s['window']} N={s['ngram']} G={s['candidates']}"
        rows.append(_race(run, "lookahead", config, params, prompt, n_new, name,
                          lambda s=s: fpd.lookahead_decode(params, config, prompt, n_new, **s)))  # fmt: skip
    _summarize(run, "Lookahead decoding (greedy, batch 1): tokens per base forward and speedup", rows)
    return rows


def jacobi_case(run, models, quick: bool):
    """Jacobi decoding with block m vs plain greedy generation on the trained target -> summary rows."""
    from chainrule.fast import parallel_decoding as fpd

    config, params, prompt, n_new = _setup(models, quick)
    rows = []
    for m in JACOBI_QUICK if quick else JACOBI_BLOCKS:
        rows.append(_race(run, "jacobi", config, params, prompt, n_new, f"jacobi m={m}",
                          lambda m=m: fpd.jacobi_decode(params, config, prompt, n_new, m)))  # fmt: skip
    _summarize(run, "Jacobi decoding (greedy, batch 1): tokens per base forward and speedup", rows)
    return rows
