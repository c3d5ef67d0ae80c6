"""`chainrule verify` rows for padded batches and generation (module "generation"):
reference.gpt / reference.generation vs fast.gpt / fast.generation (on CuPy: the reference
itself).

A fixed GPT (vocab 41, 2 layers) and four rows of different lengths in three layouts (left
padding, right padding, a hole in the middle of a row): the logits at real positions and the
padded log_prob under the tolerance table, padding invariance of the backend's own forward
(`checks.compare_padding`: each row alone vs inside left-, right- and mixed-padded batches),
and generation with eos, pad, min_new_tokens, a stop sequence and the history-aware
repetition penalty from left-padded prompts: token for token the reference's in float64; in
low precision the eos / pad rule (rows end at their first eos and hold pad after it).
"""

from __future__ import annotations

import functools

import numpy

from chainrule.verify import Result, register

GEN_CONFIG_ARGS = dict(vocab_size=41, block_size=40, n_layer=2, n_head=2, n_embd=12, bos_token=1)
GEN_ROWS = ((5, 9, 2, 30, 17, 3, 8, 20, 11), (11, 31, 7), (4,), (22, 4, 4, 21, 6, 0))
GEN_SEED = 2468
GEN_NEW = 14
GEN_SETTINGS = dict(max_new_tokens=GEN_NEW, eos_token_id=(16, 37), pad_token_id=0, min_new_tokens=2,
                    repetition_penalty=1.5, stop_sequences=((18, 18),))  # fmt: skip
# (on this case one row ends at eos, two at the stop sequence, one at min_new_tokens + stop: the loop
# stops after 10 of the 14 steps)


def layout(name: str):
    """GEN_ROWS in one batch -> (tokens, mask) for name in left / right / hole."""
    T = max(len(r) for r in GEN_ROWS) + (2 if name == "hole" else 0)
    tokens = numpy.zeros((len(GEN_ROWS), T), dtype=numpy.int64)
    mask = numpy.zeros_like(tokens)
    for b, row in enumerate(GEN_ROWS):
        if name == "hole":
            cols = [0] + list(range(3, 3 + len(row) - 1))
        else:
            start = T - len(row) if name == "left" else 0
            cols = list(range(start, start + len(row)))
        tokens[b, cols], mask[b, cols] = row, 1
    return tokens, mask


@functools.cache
def _case() -> dict:
    from chainrule.reference import generation, gpt

    config = gpt.Config(**GEN_CONFIG_ARGS)
    params = gpt.random_params(config, numpy.random.default_rng(GEN_SEED))
    case = {"config": config, "params": params, "layouts": {}}
    for name in ("left", "right", "hole"):
        tokens, mask = layout(name)
        case["layouts"][name] = (tokens, mask, gpt.forward(params, config, tokens, mask),
                                 gpt.log_prob(params, config, tokens, mask))  # fmt: skip
    gen = generation.GenerationConfig(**GEN_SETTINGS)
    tokens, mask = layout("left")
    case["generation_config"] = gen
    case["generated"] = gpt.generate(params, config, tokens, generation_config=gen, attention_mask=mask)
    return case


class _Side:
    """The GPT a backend runs (fast.gpt on torch, the reference on CuPy) on NumPy in, float64 NumPy out."""

    def __init__(self, backend, params):
        from chainrule.reference import checks

        self.checks, self.backend = checks, backend
        if backend.kind == "cupy":
            import cupy

            from chainrule.reference import gpt

            self.gpt, self.cp = gpt, cupy
            self.params = {k: cupy.asarray(v) for k, v in params.items()}
        else:
            import torch

            from chainrule.fast import backend as fb
            from chainrule.fast import gpt

            self.gpt, self.cp, self.torch = gpt, None, torch
            self.params = fb.to_torch(params, device=backend.device, dtype=backend.torch_dtype)

    def array(self, a):
        a = numpy.asarray(a)
        if self.cp is not None:
            return self.cp.asarray(a)
        return self.torch.as_tensor(a, dtype=self.torch.int64, device=self.backend.device)

    def numpy(self, a):
        if self.cp is not None:
            return a.get()
        return self.checks.as_float64(a) if a.is_floating_point() else a.detach().cpu().numpy()

    def forward(self, config, tokens, mask):
        return self.numpy(self.gpt.forward(self.params, config, self.array(tokens), self.array(mask)))

    def log_prob(self, config, tokens, mask):
        return self.numpy(self.gpt.log_prob(self.params, config, self.array(tokens), self.array(mask)))

    def generate(self, config, tokens, mask, gen):
        return self.numpy(self.gpt.generate(self.params, config, self.array(tokens), generation_config=gen,
                                            attention_mask=self.array(mask)))  # fmt: skip


def _eos_rule(out, T0, eos, pad) -> int:
    """Rows that break the eos rule: a token after the row's first eos that is not pad."""
    bad = 0
    for row in out[:, T0:]:
        hits = numpy.flatnonzero(numpy.isin(row, eos))
        bad += int(hits.size > 0 and not numpy.all(row[hits[0] + 1 :] == pad))
    return bad


@register("generation")
def generation_checks(backend, quick=False):
    """Padded batches and generation with eos (reference vs the backend). quick: the logits of the
    three layouts and padding invariance."""
    from chainrule.reference import checks, gpt

    case, dtype = _case(), backend.dtype
    config = case["config"]
    side = _Side(backend, case["params"])
    low = dtype != "float64"
    for name, (tokens, mask, logits, log_prob) in case["layouts"].items():
        real = mask == 1
        naive = checks.naive_float32(gpt.forward, side.params, config, tokens, mask)[real] if dtype == "float32" else None
        yield checks.compare(f"{name}-padded logits (real positions)", logits[real],
                             side.forward(config, tokens, mask)[real], dtype, naive=naive)  # fmt: skip
        if not quick:
            naive = checks.naive_float32(gpt.log_prob, side.params, config, tokens, mask) if dtype == "float32" else None
            yield checks.compare(f"{name}-padded log_prob", log_prob, side.log_prob(config, tokens, mask), dtype,
                                 naive=naive)  # fmt: skip
    rows = numpy.array([r[:3] for r in GEN_ROWS if len(r) >= 3])
    result = checks.compare_padding(lambda x, m: side.forward(config, x, m), rows, dtype=dtype, max_pad=4)
    yield Result("padding invariance (rows alone vs padded)", max(result.worst.values()), checks.tolerance(dtype).atol,
                 result.passed, ", ".join(f"{k} {v:.1e}" for k, v in result.worst.items()))  # fmt: skip
    if quick:
        return
    gen = case["generation_config"]
    tokens, mask = layout("left")
    got = side.generate(config, tokens, mask, gen)
    want = case["generated"]
    T0 = tokens.shape[1]
    settings = "eos, min_new_tokens, stop sequence, repetition_penalty"
    if not low:
        differing = want.size if got.shape != want.shape else int((got != want).sum())
        yield Result(f"generate, left-padded ({settings})", differing, 0, differing == 0,
                     f"differing tokens of {want.size}; {want.shape[1] - T0} of {GEN_NEW} steps run")  # fmt: skip
    else:
        broken = _eos_rule(got, T0, gen.eos_token_id, gen.pad_token_id)
        yield Result(f"generate, left-padded ({settings}): eos rule", broken, 0, broken == 0,
                     f"rows with a non-pad token after their eos, of {got.shape[0]}")  # fmt: skip
