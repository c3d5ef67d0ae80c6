"""`chainrule verify` rows for Medusa (reference.medusa vs fast.medusa; Cai et al. 2024).

One fixed seeded case: a GPT with vocabulary 13 (3 heads of size 3, 2 layers), two Medusa
heads of two residual blocks each, and a tree of 39 candidates holding every token at depth 1 (so
random heads still get tokens accepted) and every token under the two best at depth 2. On
every backend: teacher-forced base and head logits; one tree forward after a prompt (every
node's logits, head logits); the KV cache after acceptance of a deepest path; verification
(greedy and typical) on the reference's tree logits; greedy Medusa tokens judged against
greedy decoding of the reference (`reference.checks.compare_tokens`); typical Medusa tokens
and accept lengths equal to the reference's (float64 backends).
"""

from __future__ import annotations

import functools

import numpy

from chainrule.verify import Result, register

BASE_ARGS = dict(vocab_size=13, block_size=48, n_layer=2, n_head=3, n_embd=9, bos_token=2)
N_HEADS, N_LAYERS = 2, 2
CHOICES = tuple((i,) for i in range(13)) + tuple((i, j) for i in range(2) for j in range(13))
SEED = 2024
BATCH, PROMPT, NEW, T = 2, 5, 13, 11
EPSILON, TEMPERATURE = 0.2, 0.8


@functools.cache
def _case() -> dict:
    from chainrule.reference import gpt, medusa

    base = gpt.Config(**BASE_ARGS)
    config = medusa.Config.for_base(base, n_heads=N_HEADS, n_layers=N_LAYERS)
    rng = numpy.random.default_rng(SEED)
    params, heads = gpt.random_params(base, rng), medusa.random_params(config, rng)
    prompt = rng.integers(0, base.vocab_size, (BATCH, PROMPT))
    tokens = rng.integers(0, base.vocab_size, (BATCH, T))
    case = dict(base=base, config=config, params=params, heads=heads, prompt=prompt, tokens=tokens)
    case["forward"] = medusa.forward(params, base, heads, config, tokens)
    buffers = medusa.tree_buffers(CHOICES)
    h, cache = medusa.hidden(params, base, prompt[:1], medusa.init_cache(params, base))
    tree_tokens = medusa.candidates(medusa.base_logits(params, h[0, -1]), medusa.head_logits(heads, config, h[0, -1]),
                                    buffers)  # fmt: skip
    logits, head_logits, tree_cache = medusa.tree_forward(params, base, heads, config, cache, tree_tokens, buffers)
    row = int(numpy.argmax(buffers["path_length"]))
    nodes = buffers["paths"][row, : buffers["path_length"][row]]
    kept = medusa.keep_path(tree_cache, PROMPT, nodes)
    case |= dict(buffers=buffers, tree_tokens=tree_tokens, nodes=nodes, tree=(logits, head_logits),
                 kept=(numpy.stack(kept["k"]), numpy.stack(kept["v"])))  # fmt: skip
    verify_tokens = tree_tokens.copy()  # half the nodes set to their parent's argmax: paths get accepted
    pick = rng.random(len(verify_tokens)) < 0.5
    pick[0] = False
    verify_tokens[pick] = numpy.argmax(logits, -1)[buffers["parent"][pick]]
    case["verify_tokens"] = verify_tokens
    case["verify"] = {mode: medusa.verify(logits, verify_tokens, buffers, mode, EPSILON) for mode in medusa.MODES}
    return case


@functools.cache
def _typical_truth():
    """The reference's typical-acceptance generation of the case: (tokens, accept lengths)."""
    from chainrule.reference import medusa

    c = _case()
    return medusa.generate(c["params"], c["base"], c["heads"], c["config"], c["prompt"], NEW, CHOICES,
                           mode="typical", epsilon=EPSILON, temperature=TEMPERATURE)  # fmt: skip


class _Side:
    """fast.medusa on a torch backend, or the reference itself on CuPy arrays."""

    def __init__(self, backend, case):
        from chainrule.fast import backend as fb
        from chainrule.reference import medusa

        self.backend, self.cupy = backend, backend.kind == "cupy"
        if self.cupy:
            import cupy

            self.cp, self.m = cupy, medusa
            self.P = {k: cupy.asarray(v) for k, v in case["params"].items()}
            self.H = {k: cupy.asarray(v) for k, v in case["heads"].items()}
        else:
            from chainrule.fast import medusa as fast_medusa

            self.m = fast_medusa
            self.P = fb.to_torch(case["params"], backend.device, backend.torch_dtype)
            self.H = fb.to_torch(case["heads"], backend.device, backend.torch_dtype)

    def array(self, a, float64=False):
        if self.cupy:
            return self.cp.asarray(a)
        import torch

        a = numpy.asarray(a)
        if a.dtype.kind == "f":
            return torch.as_tensor(a, dtype=torch.float64, device=self.backend.device)
        return torch.as_tensor(a, dtype=torch.int64, device=self.backend.device)

    def kw(self, naive):
        return {} if self.cupy else {"attn_impl": "math" if naive else "sdpa"}

    def forward(self, case, naive=False):
        return self.m.forward(self.P, case["base"], self.H, case["config"], self.array(case["tokens"]),
                              **self.kw(naive))  # fmt: skip

    def tree(self, case, naive=False):
        from chainrule.reference.checks import as_float64

        base, buffers = case["base"], case["buffers"]
        cache = self.m.init_cache(self.P, base, PROMPT + len(buffers["depth"]))
        _, cache = self.m.hidden(self.P, base, self.array(case["prompt"][:1]), cache)
        logits, heads, cache = self.m.tree_forward(self.P, base, self.H, case["config"], cache,
                                                   self.array(case["tree_tokens"]), buffers,
                                                   **self.kw(naive))  # fmt: skip
        cache = self.m.keep_path(cache, PROMPT, case["nodes"])
        n = PROMPT + len(case["nodes"])
        if self.cupy:
            k, v = (numpy.stack([as_float64(a) for a in cache[s]]) for s in ("k", "v"))
        else:
            k, v = as_float64(cache.k[:, :, :, :n]), as_float64(cache.v[:, :, :, :n])
        return logits, heads, k, v

    def generate(self, case, **kwargs):
        out, accepted = self.m.generate(self.P, case["base"], self.H, case["config"], self.array(case["prompt"]), NEW,
                                        CHOICES, **kwargs)  # fmt: skip
        return (out.get() if self.cupy else out.cpu().numpy()), accepted


def _naive32(case):
    """The spec in float32 NumPy: forward and tree outputs (the float32 naive baseline)."""
    from chainrule.reference import medusa
    from chainrule.reference.checks import as_float64

    P = {k: v.astype(numpy.float32) for k, v in case["params"].items()}
    H = {k: v.astype(numpy.float32) for k, v in case["heads"].items()}
    base, config, buffers = case["base"], case["config"], case["buffers"]
    fwd = medusa.forward(P, base, H, config, case["tokens"])
    _, cache = medusa.hidden(P, base, case["prompt"][:1], medusa.init_cache(P, base))
    logits, heads, cache = medusa.tree_forward(P, base, H, config, cache, case["tree_tokens"], buffers)
    cache = medusa.keep_path(cache, PROMPT, case["nodes"])
    out = (*fwd, logits, heads, numpy.stack(cache["k"]), numpy.stack(cache["v"]))
    assert all(o.dtype == numpy.float32 for o in out), "naive float32 baseline computed in another dtype"
    return tuple(as_float64(o) for o in out)


@register("medusa")
def medusa_checks(backend, quick=False):
    """Medusa (reference.medusa vs fast.medusa) on one backend (quick: no decoding rows)."""
    from chainrule.fast import gpt as fast_gpt
    from chainrule.reference import checks
    from chainrule.reference import gpt as reference_gpt

    case = _case()
    dtype = backend.dtype
    low = dtype != "float64"
    side = _Side(backend, case)
    got = (*side.forward(case), *side.tree(case))
    if not low or side.cupy:
        naive = (None,) * 6
    elif dtype == "float32":
        naive = _naive32(case)
    else:
        naive = (*side.forward(case, naive=True), *side.tree(case, naive=True))
    truth = (*case["forward"], *case["tree"], *case["kept"])
    names = ("base logits (teacher forcing)", "head logits (teacher forcing)",
             f"tree logits ({len(case['buffers']['depth'])} nodes, one forward)", "tree head logits",
             f"cached keys after accepting a {len(case['nodes']) - 1}-node path",
             "cached values after acceptance")  # fmt: skip
    for name, t, g, n in zip(names, truth, got, naive):
        yield checks.compare(name, t, g, dtype, naive=n)
    logits = side.array(case["tree"][0])  # the reference's tree logits, float64 on the backend's device
    for mode, want in case["verify"].items():
        row, a = side.m.verify(logits, side.array(case["verify_tokens"]), case["buffers"], mode, EPSILON)
        same = (int(row), int(a)) == want
        yield Result(f"verification ({mode}): accepted path and length", 0 if same else 1, 0, same,
                     f"path {int(row)}, {int(a)} accepted (reference: path {want[0]}, {want[1]})")  # fmt: skip
    if quick:
        return
    out, accepted = side.generate(case)
    params, base, prompt = case["params"], case["base"], case["prompt"]

    def fast(x):  # the backend's step logits of plain decoding along its sequence (prompt prefill, then steps)
        model = reference_gpt if side.cupy else fast_gpt
        return checks.logits_through_cache(model, side.P, base, side.array(x), [PROMPT])

    per_forward = BATCH * NEW / (BATCH + sum(len(a) for a in accepted))
    result = checks.compare_tokens(f"greedy Medusa tokens = greedy decoding ({per_forward:.2f} tokens/base forward)",
                                   prompt, out, lambda x: reference_gpt.forward(params, base, x), dtype,
                                   fast=fast if low else None, max_new_tokens=NEW)  # fmt: skip
    yield result
    if not low:
        out, accepted = side.generate(case, mode="typical", epsilon=EPSILON, temperature=TEMPERATURE)
        want_out, want_accepted = _typical_truth()
        same_tokens = int((out != want_out).sum())
        same_a = all(numpy.array_equal(a, b) for a, b in zip(accepted, want_accepted))
        yield Result("typical Medusa tokens and accept lengths = reference", same_tokens + (0 if same_a else 1), 0,
                     same_tokens == 0 and same_a,
                     f"{same_tokens} of {out.size} tokens differ; "
                     f"accept lengths {'equal' if same_a else 'differ'}")  # fmt: skip
