"""`chainrule verify` rows for Jacobi and lookahead decoding (module "parallel_decoding").

On a fixed seeded GPT (vocabulary 29, two layers, head_dim 3) and a prompt whose
n-grams repeat, on every backend:

    lookahead greedy tokens      each token against the reference's greedy choice given the
    jacobi greedy tokens         backend's own prefix (reference.checks.compare_tokens):
                                 both decoders must output greedy decoding
    float64: steps = reference   model calls and tokens per step (lookahead), iterations per
                                 block (Jacobi), and the sampling-mode tokens: identical
    low precision: sampling without candidates (inverse-CDF sampling with u[:, :, 0]), judged
                                 as sampled tokens

and once, under torch-cpu-f64 (the verification rule is backend-independent Python):

    point-mass verification      the exact distribution of 3 emitted tokens, enumerated over
                                 every accept/reject branch, vs the target's chain rule (1e-13)
"""

from __future__ import annotations

import functools

import numpy

from chainrule.verify import Result, register

SEED, NEW = 2024, 23
LOOKAHEAD = dict(window=3, ngram=3, candidates=3, prompt_ngrams=True)
EXACT = 1e-13


@functools.lru_cache(maxsize=1)
def _case():
    """config, params, prompt, uniforms -- computed once per process."""
    from chainrule.reference import gpt

    config = gpt.Config(vocab_size=29, block_size=32, n_layer=2, n_head=2, n_embd=6)
    rng = numpy.random.default_rng(SEED)
    params = gpt.random_params(config, rng)
    params["wte"] = params["wte"] * 0.7
    base = rng.integers(0, 29, size=4)
    prompt = numpy.concatenate([base, base, base[:2]])[None]  # (1, 10)
    u = rng.random((1, NEW, LOOKAHEAD["candidates"] + 1))
    return {"config": config, "params": params, "prompt": prompt, "u": u}


@functools.cache
def _truth(name: str):
    """The reference's decoding of the case: "lookahead", "sampled" (lookahead from the shared
    uniforms) or "jacobi" -> (tokens, stats); each computed once, when first asked for."""
    from chainrule.reference import parallel_decoding as pd

    c = _case()
    config, params, prompt = c["config"], c["params"], c["prompt"]
    if name == "lookahead":
        return pd.lookahead_decode(params, config, prompt, NEW, **LOOKAHEAD)
    if name == "sampled":
        return pd.lookahead_decode(params, config, prompt, NEW, u=c["u"], **LOOKAHEAD)
    return pd.jacobi_decode(params, config, prompt, NEW, 5, rng=numpy.random.default_rng(SEED))


def _decoders(backend, params):
    """(module, params, prompt converter, token converter) for the backend."""
    if backend.kind == "cupy":
        import cupy

        from chainrule.reference import parallel_decoding as impl

        return impl, {k: cupy.asarray(v) for k, v in params.items()}, cupy.asarray
    from chainrule.fast import backend as fb
    from chainrule.fast import parallel_decoding as impl

    return impl, fb.to_torch(params, backend.device, backend.torch_dtype), lambda a: a


def _np(tokens):
    return numpy.asarray(tokens.cpu() if hasattr(tokens, "cpu") else tokens, dtype=numpy.int64)


def _same_steps(quantity, want, got) -> Result:
    ok = want == got
    note = f"{want.forwards} model calls, tokens per step {list(want.tokens_per_step)}"
    return Result(quantity, 0.0 if ok else float(abs(want.forwards - got.forwards) or 1), 0.0, ok,
                  note if ok else f"reference {want}, backend {got}")  # fmt: skip


def _exact_distribution() -> Result:
    from chainrule.reference import parallel_decoding as pd

    V, rng = 3, numpy.random.default_rng(SEED)
    p = rng.dirichlet(numpy.full(V, 0.6), size=(V, V))  # context: the last two tokens
    p[0, 1] = [0.0, 1.0, 0.0]  # a point mass
    p[2, 2] = [0.5, 0.0, 0.5]  # a zero

    def target(seq):
        return p[seq[-1], seq[-2]]

    def candidates(seq):
        return [(seq[-1], (seq[-2] + 1) % V), (1, 2), (seq[-1], 0)]

    exact = pd.exact_output_distribution(target, candidates, (0, 1), 3, V)
    truth = pd.chain_rule_distribution(target, (0, 1), 3, V)
    err = float(numpy.abs(exact - truth).max())
    return Result("point-mass verification: exact output distribution = chain rule (V=3, 3 tokens)", err, EXACT,
                  err <= EXACT, "every accept/reject branch enumerated")  # fmt: skip


@register("parallel_decoding")
def parallel_decoding_checks(backend, quick=False):
    """Jacobi and lookahead decoding (reference.parallel_decoding vs the backend); quick: lookahead
    greedy only."""
    from chainrule.reference import checks
    from chainrule.reference import gpt

    case = _case()
    config, params, prompt, u = case["config"], case["params"], case["prompt"], case["u"]
    impl, P, convert = _decoders(backend, params)
    dtype, low = backend.dtype, backend.dtype != "float64"

    def reference(x):
        return gpt.forward(params, config, x)

    fast = None
    if low:
        from chainrule.fast import gpt as fgpt

        def fast(x):  # the backend's step logits along its own sequence (prompt prefill, then steps)
            return checks.logits_through_cache(fgpt, P, config, fgpt.check_tokens(x, config, device=P["wte"].device),
                                               [prompt.shape[1]])  # fmt: skip

    tokens, stats = impl.lookahead_decode(P, config, convert(prompt), NEW, **LOOKAHEAD)
    yield checks.compare_tokens("lookahead greedy tokens (W=3, N=3, G=3)", prompt, _np(tokens), reference, dtype,
                                fast=fast, max_new_tokens=NEW)  # fmt: skip
    if not low:
        yield _same_steps("lookahead steps = reference", _truth("lookahead")[1], stats)
    if quick:
        return
    j_tokens, j_stats = impl.jacobi_decode(P, config, convert(prompt), NEW, 5, rng=numpy.random.default_rng(SEED))
    yield checks.compare_tokens("jacobi greedy tokens (m=5, random start)", prompt, _np(j_tokens), reference, dtype,
                                fast=fast, max_new_tokens=NEW)  # fmt: skip
    if not low:
        want = _truth("jacobi")[1]
        ok = want == j_stats
        note = f"iterations {list(want.iterations)} (each <= m = 5)" if ok else f"reference {want}, backend {j_stats}"
        yield Result("jacobi iterations per block = reference", 0.0 if ok else 1.0, 0.0, ok, note)
        s_tokens, s_stats = impl.lookahead_decode(P, config, convert(prompt), NEW, u=u, **LOOKAHEAD)
        same = bool(numpy.array_equal(_np(s_tokens), _truth("sampled")[0]))
        diff = int((_np(s_tokens) != _truth("sampled")[0]).sum())
        yield Result("lookahead sampling-mode tokens = reference (shared uniforms)", float(diff), 0.0, same,
                     f"{NEW} tokens in {s_stats.forwards} model calls")  # fmt: skip
    else:
        u0 = u[:, :, :1]
        s_tokens, _ = impl.lookahead_decode(P, config, convert(prompt), NEW, u=u0, **dict(LOOKAHEAD, candidates=0))
        yield checks.compare_tokens("lookahead sampling, no candidates (= inverse-CDF sampling)", prompt,
                                    _np(s_tokens), reference, dtype, u=u0[:, :, 0], fast=fast,
                                    max_new_tokens=NEW)  # fmt: skip
    if backend.name == "torch-cpu-f64":
        yield _exact_distribution()
