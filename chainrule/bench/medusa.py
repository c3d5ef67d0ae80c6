"""Medusa's row of the decoding benchmark (`chainrule bench speculative`).

`medusa_case(run, models, quick)`: Medusa-1 heads trained briefly on the frozen trained target
of `chainrule.bench.models.trained_gpt_pair` (same bytes as the target), then greedy decoding
of held-out prompts by plain `fast.gpt.generate` (one token per base forward) against
`fast.medusa.generate` over three trees -- a chain of depth 3 (4 nodes), a small top-2 tree
(10 nodes) and the public tree `MC_SIM_7B_63` (64 nodes, depth 4) -- and typical acceptance
over the public tree. Measured side by side
in one run: tokens per base forward (the prompt's prefill counted as one forward, as for plain
decoding), the fraction of tokens identical to plain greedy decoding (greedy rows: must be 1),
and the wall-clock speedup over plain decoding. The heads are cached (fast.train checkpoint)
under bench-results/models/medusa-heads-<key>/.
"""

from __future__ import annotations

import hashlib
import json

import numpy

HEADS = dict(n_heads=4, n_layers=1)
TRAIN = dict(steps=300, batch_size=16, lr=1e-3, weight_decay=0.0, warmup_steps=20, min_lr=1e-4, grad_clip=1.0,
             log_every=50, seed=0)  # fmt: skip
QUICK_TRAIN = dict(TRAIN, steps=30, batch_size=8, warmup_steps=3)
DATA_BYTES, QUICK_DATA_BYTES = 1_000_000, 200_000
CHAIN = ((0,), (0, 0), (0, 0, 0))  # the top-1 of heads 0..2: 4 nodes
SMALL = ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 0, 0, 0))  # top-2 near the root: 10
CACHE_VERSION = 1


def _key(base_config, base_params, train: dict, n_bytes: int) -> str:
    """A hash of everything that determines the heads: the base's config and weights, the
    head config, the training settings and the data size."""
    h = hashlib.sha256()
    h.update(json.dumps({"base": repr(base_config), "heads": HEADS, "train": train, "bytes": n_bytes,
                         "v": CACHE_VERSION}, sort_keys=True).encode())  # fmt: skip
    for name in sorted(base_params):
        h.update(numpy.ascontiguousarray(numpy.asarray(base_params[name].detach().cpu().float())).tobytes())
    return h.hexdigest()[:12]


def trained_heads(base_config, base_params, quick: bool, progress: bool = False):
    """Medusa-1 heads for the frozen base, trained with fast.medusa.train_heads on the base's
    training bytes (cached) -> (head config, heads as float32 CPU tensors)."""
    from chainrule import data
    from chainrule.bench.models import MODELS_DIR
    from chainrule.fast import medusa as fast_medusa
    from chainrule.fast import train as ft
    from chainrule.reference import medusa

    train = QUICK_TRAIN if quick else TRAIN
    n_bytes = QUICK_DATA_BYTES if quick else DATA_BYTES
    config = medusa.Config.for_base(base_config, **HEADS)
    out_dir = MODELS_DIR / f"medusa-heads-{_key(base_config, base_params, train, n_bytes)}"
    cfg = ft.TrainConfig(**train)
    try:
        heads, meta = ft.load_checkpoint(out_dir, name="medusa", config=config)
        if meta["step"] == cfg.steps:
            return config, heads
    except FileNotFoundError:
        pass
    windows = data.windows(data.stdlib_bytes(n_bytes, "train"), base_config.block_size)
    init = medusa.init(config, numpy.random.default_rng(0), {"wte": base_params["wte"].detach().double().numpy()})
    fast_medusa.train_heads(base_params, base_config, init, config, windows, cfg=cfg, out_dir=out_dir,
                            progress=progress)  # fmt: skip
    heads, _ = ft.load_checkpoint(out_dir, name="medusa", config=config)
    return config, heads


def _head_accuracy(base_config, base_params, config, heads, tokens) -> list[float]:
    """Top-1 accuracy of head k on the token k + 2 ahead, over held-out windows (B, T)."""
    import torch

    from chainrule.fast import medusa as fast_medusa

    with torch.inference_mode():
        _, medusa_logits = fast_medusa.forward(base_params, base_config, heads, config, torch.as_tensor(tokens))
    T = tokens.shape[1]
    return [float((medusa_logits[k, :, : T - k - 2].argmax(-1).numpy() == tokens[:, k + 2 :]).mean())
            for k in range(config.n_heads)]  # fmt: skip


def medusa_case(run, models, quick: bool) -> list[dict]:
    """Medusa's rows: `models` = trained_gpt_pair(quick) (the target is the base; the draft is
    unused). Races plain greedy `fast.gpt.generate` against `fast.medusa.generate` on the same
    held-out prompts (batch 1 each, float32, on the params' device), adds a summary table and
    returns its rows: dicts with method, new_tokens, forwards, tokens_per_forward, speedup,
    identical_to_greedy (the same keys as the Jacobi and lookahead rows), tree, nodes, mode.

    Greedy Medusa is exact in exact arithmetic; in float32 the tree forward computes the same
    logits with other kernels than one-token steps, so a near-tie could flip a token: the row
    reports whether the outputs agree rather than asserting it (typical acceptance is not
    greedy decoding, and its agreement is informative only)."""
    import torch

    from chainrule import data
    from chainrule.fast import gpt as fast_gpt
    from chainrule.fast import medusa as fast_medusa
    from chainrule.reference import medusa

    base_config, base_params = models[0], models[1]
    device = base_params["wte"].device
    cpu_params = {k: v.detach().to("cpu", torch.float32) for k, v in base_params.items()}
    config, heads = trained_heads(base_config, cpu_params, quick)
    base_params = {k: v.detach().to(device, torch.float32) for k, v in base_params.items()}
    heads = {k: v.to(device, torch.float32) for k, v in heads.items()}
    held_out = data.stdlib_bytes(200_000, "validation")
    val = data.windows(held_out, base_config.block_size, 64)
    accuracy = _head_accuracy(base_config, cpu_params, config, {k: v.cpu() for k, v in heads.items()}, val)
    run.note("Medusa head top-1 accuracy on held-out bytes (head k: token k+2 ahead)", [round(a, 3) for a in accuracy])
    n_prompts, T0 = (2, 16) if quick else (4, base_config.block_size // 4)
    N = base_config.block_size + 1 - T0
    rng = numpy.random.default_rng(7)
    starts = rng.integers(0, len(held_out) - T0, n_prompts)
    prompts = [torch.as_tensor(held_out[s : s + T0][None, :], device=device) for s in starts]
    trees = [("chain of 3", CHAIN, "greedy"), ("small tree", SMALL, "greedy"),
             ("mc_sim_7b_63", medusa.MC_SIM_7B_63, "greedy"), ("mc_sim_7b_63", medusa.MC_SIM_7B_63, "typical")]
    with torch.inference_mode():
        plain = [fast_gpt.generate(base_params, base_config, p, N) for p in prompts]

    def plain_fn():
        for p in prompts:
            fast_gpt.generate(base_params, base_config, p, N)

    rows = []
    for label, choices, mode in trees:
        out = {}

        def medusa_fn(choices=choices, mode=mode):
            for i, p in enumerate(prompts):
                out[i] = fast_medusa.generate(base_params, base_config, heads, config, p, N, choices, mode=mode)

        name = f"Medusa {label} ({mode})"
        t_plain, t_medusa = run.race(f"medusa {label}, {mode}", [("fast.gpt.generate greedy", plain_fn),
                                                                  (name, medusa_fn)],
                                     work=n_prompts * N, unit="tokens")  # fmt: skip
        forwards = sum(1 + len(out[i][1][0]) for i in out)  # per prompt: the prefill, then one per tree
        identical = all(torch.equal(out[i][0], plain[i]) for i in out)
        row = dict(method=name, new_tokens=n_prompts * N, forwards=forwards,
                   tokens_per_forward=n_prompts * N / forwards, speedup=t_plain.median / t_medusa.median,
                   identical_to_greedy=identical, tree=label, nodes=len(medusa.tree_buffers(choices)["depth"]),
                   mode=mode)  # fmt: skip
        run.record(f"medusa: {name}", row)
        rows.append(row)
    steps = (QUICK_TRAIN if quick else TRAIN)["steps"]
    run.summary(
        f"Medusa-1 ({config.n_heads} heads of {config.n_layers} block, trained {steps} steps on the frozen target; "
        f"batch 1, {n_prompts} held-out prompts of {T0} bytes, {N} new tokens each)",
        ["method", "tree nodes", "tokens/forward", "forwards", "speedup vs greedy", "= greedy"],
        [[r["method"], r["nodes"], r["tokens_per_forward"], r["forwards"], r["speedup"], str(r["identical_to_greedy"])]
         for r in rows],
    )  # fmt: skip
    return rows
