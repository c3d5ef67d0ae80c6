"""Bench topic for the classic neural language models.

rnn   the recurrent LMs (elman, lstm, gru) and Bengio et al.'s NPLM, fast vs reference,
      side by side in one run, in tokens/s:
        - log_prob (teacher forcing) of B x T tokens: the reference (NumPy float64)
          against fast in float64 and float32 (torch's fused RNN kernels on the CPU;
          on a GPU, cuDNN in float32 is added);
        - step-by-step generation (greedy, batch 1 and batch B): the reference's
          `generate` (one pure `step` per token) against fast's `generate`.
      Random weights (`random_params`); the reference generation decodes fewer tokens
      (its rate is per token all the same). --quick: tiny sizes, seconds.
"""

from __future__ import annotations

import numpy

from chainrule.bench import Run, topic

FULL = dict(vocab_size=5003, n_embd=128, hidden=256, n_layer=2)
QUICK = dict(vocab_size=101, n_embd=16, hidden=32, n_layer=1)
NPLM_FULL = dict(vocab_size=5003, order=5, n_embd=64, hidden=256, direct=True)
NPLM_QUICK = dict(vocab_size=101, order=4, n_embd=8, hidden=32, direct=True)


def _models(quick: bool):
    """(name, reference module, fast module, config) for every model benched."""
    from chainrule.fast import nplm as fast_nplm
    from chainrule.fast import rnn as fast_rnn
    from chainrule.reference import nplm, rnn

    args = QUICK if quick else FULL
    models = [(kind, rnn, fast_rnn, rnn.Config(kind=kind, **args)) for kind in rnn.KINDS]
    return models + [("nplm", nplm, fast_nplm, nplm.Config(**(NPLM_QUICK if quick else NPLM_FULL)))]


@topic("rnn", "recurrent LMs (elman, lstm, gru) and Bengio's NPLM: fast vs reference tokens/s, log_prob and generation",
       repeats=3)
def bench_rnn(run: Run) -> None:
    import torch

    from chainrule.fast import backend as fb

    quick = run.quick
    B, T = (2, 16) if quick else (8, 64)
    prompt_len, new, ref_new = (4, 8, 8) if quick else (8, 64, 16)
    run.note("log_prob batch x length", f"{B} x {T}")
    run.note("generation", f"prompt {prompt_len}, fast {new} new tokens, reference {ref_new} (greedy)")
    run.note("torch_threads", torch.get_num_threads())
    cuda = torch.cuda.is_available()
    rows = []
    for name, ref, fast, config in _models(quick):
        run.note(f"{name} config", str(config))
        rng = numpy.random.default_rng(0)
        params = ref.random_params(config, rng)
        tokens = rng.integers(0, config.vocab_size, (B, T))
        p64, p32 = fb.to_torch(params, dtype=torch.float64), fb.to_torch(params, dtype=torch.float32)
        t = torch.as_tensor(tokens)
        contenders = [
            ("fast float32", lambda: fast.log_prob(p32, config, t)),
            ("fast float64", lambda: fast.log_prob(p64, config, t)),
            ("reference float64", lambda: ref.log_prob(params, config, tokens)),
        ]
        if cuda:
            pc, tc = fb.to_torch(params, device="cuda", dtype=torch.float32), t.cuda()
            contenders.append(("fast cuda float32", lambda: fast.log_prob(pc, config, tc)))
        with torch.inference_mode():
            lp = {x.name: x for x in run.race(f"{name} log_prob", contenders, work=B * T, unit="tokens")}
        row = [name, lp["reference float64"].rate, lp["fast float64"].rate, lp["fast float32"].rate,
               lp["fast float32"].rate / lp["reference float64"].rate]  # fmt: skip
        for batch in (1, B):
            prompt = tokens[:batch, :prompt_len]
            pt = torch.as_tensor(prompt)
            gen = [
                (f"fast float32 ({new} new)", lambda: fast.greedy(p32, config, pt, new), batch * new),
                (f"reference float64 ({ref_new} new)", lambda: ref.greedy(params, config, prompt, ref_new),
                 batch * ref_new),
            ]  # fmt: skip
            timed = [run.time(f"{name} generate B={batch}", label, fn, work=work, unit="tokens", repeats=run.repeats)
                     for label, fn, work in gen]  # fmt: skip
            row += [timed[1].rate, timed[0].rate, timed[0].rate / timed[1].rate]
        rows.append(row)
    run.summary(
        f"tokens/s: log_prob of {B} x {T} tokens (teacher forcing), greedy generation at batch 1 and {B}; "
        f"ratio = fast float32 / reference float64",
        ["model", "log_prob ref", "fast f64", "fast f32", "ratio", "gen B=1 ref", "fast f32", "ratio",
         f"gen B={B} ref", "fast f32", "ratio"],
        [[r[0]] + [f"{v:.1f}x" if i in (3, 6, 9) else f"{v:,.0f}" for i, v in enumerate(r[1:])] for r in rows],
    )  # fmt: skip
    keys = ["model", "logprob_ref", "logprob_fast_f64", "logprob_fast_f32", "logprob_ratio", "gen1_ref",
            "gen1_fast_f32", "gen1_ratio", "genB_ref", "genB_fast_f32", "genB_ratio"]  # fmt: skip
    run.record("results", [dict(zip(keys, r)) for r in rows])
