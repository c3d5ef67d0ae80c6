"""`chainrule verify` rows for speculative decoding (reference/speculative.py, fast/speculative.py).

Per backend:
- exact distribution: the backend's own GPTs as target and draft (probabilities in float64 from its
  logits); the exact distribution of the first 3 emitted tokens (every proposal and accept/reject
  branch, k = 2) against the target's chain rule over all 3^3 sequences. This holds for any pair
  of models, so it holds on every backend to float64 rounding.
- tokens and acceptance counts of batched speculative generation (fast.speculative.generate; on
  cupy-f64 the reference itself on CuPy) against the float64 reference with shared uniforms,
  exactly (float64 and float32; bfloat16 logits move decisions, so it has no token rows).
"""

from __future__ import annotations

import functools

import numpy

from chainrule.verify import Result, register

EXACT_BOUND = 1e-13
ENUM_TARGET = dict(vocab_size=3, block_size=9, n_layer=2, n_head=3, n_embd=9)
ENUM_DRAFT = dict(vocab_size=3, block_size=9, n_layer=1, n_head=1, n_embd=3)
ENUM_K, ENUM_LENGTH = 2, 3
GEN_TARGET = dict(vocab_size=13, block_size=29, n_layer=2, n_head=3, n_embd=15)
GEN_B, GEN_T0, GEN_N, GEN_K = 3, 5, 13, 3
SEED = 2024


@functools.cache
def _case() -> dict:
    from chainrule.reference import gpt

    rng = numpy.random.default_rng(SEED)
    et, ed = gpt.Config(**ENUM_TARGET), gpt.Config(**ENUM_DRAFT)
    case = {"enum": (gpt.random_params(et, rng), et, gpt.random_params(ed, rng), ed)}
    config = gpt.Config(**GEN_TARGET)
    target = gpt.random_params(config, rng)
    draft = {n: v + 0.15 * rng.normal(size=v.shape) for n, v in target.items()}  # long runs and rejections
    prompt = rng.integers(0, config.vocab_size, (GEN_B, GEN_T0))
    u = rng.random((GEN_B, GEN_N, 2 * GEN_K + 1))
    case["gen"] = (target, draft, config, prompt, u)
    return case


@functools.cache
def _reference_generation() -> tuple:
    """The reference's speculative decoding of the generation case: (tokens (B, T0 + N),
    per-row acceptance counts); computed once, when the token rows first run."""
    from chainrule.reference import speculative as sp

    target, draft, config, prompt, u = _case()["gen"]
    rows = [sp.generate(sp.gpt_model(target, config), sp.gpt_model(draft, config), prompt[b], GEN_K, GEN_N, u=u[b])
            for b in range(GEN_B)]  # fmt: skip
    return numpy.stack([r[0] for r in rows]), [r[1] for r in rows]


def _backend_model(backend, params, config):
    """The backend's GPT as a callable seq -> float64 NumPy probabilities of the next token."""
    if backend.kind == "cupy":
        import cupy

        from chainrule.reference import speculative as sp

        model = sp.gpt_model({k: cupy.asarray(v) for k, v in params.items()}, config)
        return lambda seq: cupy.asnumpy(model(cupy.asarray(seq)))
    import torch

    from chainrule.fast import backend as fb
    from chainrule.fast import gpt as fgpt
    from chainrule.fast import sampling as fs

    P = fb.to_torch(params, device=backend.device, dtype=backend.torch_dtype)

    def model(seq):
        x = torch.as_tensor(numpy.asarray(seq)[None, :], dtype=torch.int64, device=backend.device)
        return fs.probs(fgpt.forward(P, config, x)[0, -1]).cpu().numpy()  # float64 whatever the dtype

    return model


def _generate(backend, target, draft, config, prompt, u):
    """(tokens (B, T0 + N), per-row acceptance counts) on the backend."""
    if backend.kind == "cupy":
        import cupy

        from chainrule.reference import speculative as sp

        T = sp.gpt_model({k: cupy.asarray(v) for k, v in target.items()}, config)
        D = sp.gpt_model({k: cupy.asarray(v) for k, v in draft.items()}, config)
        rows = [sp.generate(T, D, cupy.asarray(prompt[b]), GEN_K, GEN_N, u=cupy.asarray(u[b])) for b in range(GEN_B)]
        return numpy.stack([cupy.asnumpy(r[0]) for r in rows]), [cupy.asnumpy(r[1]) for r in rows]
    from chainrule.fast import backend as fb
    from chainrule.fast import speculative as fsp

    T = (fb.to_torch(target, device=backend.device, dtype=backend.torch_dtype), config)
    D = (fb.to_torch(draft, device=backend.device, dtype=backend.torch_dtype), config)
    tokens, accepted = fsp.generate(T, D, prompt, GEN_K, GEN_N, u=u)
    accepted = accepted.cpu().numpy()
    return tokens.cpu().numpy(), [a[a >= 0] for a in accepted]


@register("speculative")
def speculative_checks(backend, quick=False):
    """Speculative decoding on one backend (module docstring); quick: the exact distribution row."""
    from chainrule.reference import speculative as sp

    case = _case()
    tp, tc, dp, dc = case["enum"]
    target, draft = _backend_model(backend, tp, tc), _backend_model(backend, dp, dc)
    prefix = numpy.array([1])
    exact = sp.exact_output_distribution(target, draft, prefix, ENUM_K, ENUM_LENGTH)
    truth = sp.target_distribution(target, prefix, ENUM_LENGTH)
    err = float(numpy.abs(exact - truth).max())
    yield Result(f"exact distribution = chain rule ({tc.vocab_size}^{ENUM_LENGTH} seqs, k={ENUM_K})", err, EXACT_BOUND,
                 err <= EXACT_BOUND, f"sum {exact.sum():.15f}")  # fmt: skip
    if quick or backend.dtype == "bfloat16":
        return  # bfloat16 logit errors move acceptance decisions: no one-for-one token rows
    target_p, draft_p, config, prompt, u = case["gen"]
    tokens, accepted = _generate(backend, target_p, draft_p, config, prompt, u)
    want_tokens, ref_acc = _reference_generation()
    wrong = int((tokens != want_tokens).sum())
    yield Result(f"tokens vs reference, shared uniforms (B={GEN_B}, k={GEN_K})", wrong, 0, wrong == 0,
                 f"{GEN_B * GEN_N} new tokens" + ("" if wrong == 0 else f", {wrong} differ"))  # fmt: skip
    bad = sum(a.tolist() != r.tolist() for a, r in zip(accepted, ref_acc))
    steps = sum(len(r) for r in ref_acc)
    mean = float(numpy.mean(numpy.concatenate(ref_acc)))
    yield Result("acceptance counts vs reference (rows differing)", bad, 0, bad == 0,
                 f"{steps} steps, mean accepted {mean:.2f} of {GEN_K}")  # fmt: skip
