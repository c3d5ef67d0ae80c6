"""Generation, fast: the decoding loop of reference/generation.py in torch.

`decode` is reference.generation.decode (read its docstring: processors see the tokens so far,
rows finish at eos or a stop sequence and then hold pad, the loop stops when every row has
finished) for the fast models' `generate`, built for speed:

- without eos and stop sequences it never waits for the device: the logits of every step are
  validated once, after the loop (a NaN still raises ValueError, naming the step);
- with them, it checks once per step which rows finished (one host sync, as HF's loop does)
  and drops those rows from the batch: the model's `keep(rows)` shrinks its state (fast.gpt
  drops their KV cache rows), so a finished row costs no compute. Processors act row by row,
  so running them on the remaining rows alone changes nothing.

GenerationConfig, its processors (`logits_processors`) and `plan` are the reference's, called
with the fast processor table.
"""

from __future__ import annotations

import torch

from chainrule.fast import sampling
from chainrule.reference.generation import GenerationConfig, logits_processors, plan
from chainrule.reference.sampling import as_processor

__all__ = ["GenerationConfig", "logits_processors", "plan", "decode", "ends_with"]


def ends_with(ids: torch.Tensor, sequences) -> torch.Tensor:
    """(B,) bool: row b of ids (B, t) ends with one of `sequences` (reference.generation.ends_with)."""
    hit = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for s in sequences:
        if len(s) <= ids.shape[1]:
            want = torch.tensor(s, dtype=ids.dtype, device=ids.device)
            hit |= (ids[:, ids.shape[1] - len(s) :] == want).all(dim=1)
    return hit


def _choose(logits, process_list, ids, u_n, B, V):
    """Processors then the token: -> (token (B,), row max (B,) float64 for the final validation)."""
    for process in process_list:
        logits = process(logits, ids)
    if not (isinstance(logits, torch.Tensor) and logits.is_floating_point() and logits.shape == (B, V)):
        got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"processors: expected floating logits of shape {(B, V)}, got {got}")
    if u_n is None:
        m, token = torch.max(logits, dim=-1)  # the first index on ties
        return token, m.to(torch.float64)
    return sampling.inverse_cdf(logits, u_n)


def decode(logits: torch.Tensor, step, prompt: torch.Tensor, max_new_tokens: int, *, processors=(), u=None,
           eos_token_id=(), pad_token_id=None, stop_sequences=(), keep=None) -> torch.Tensor:  # fmt: skip
    """reference.generation.decode for the fast models' `generate`.

    logits: (B, V) after the prompt (float64 for float64 models; anything else is processed in
    float32); step(tokens (B',)) -> the next logits (B', V) of the rows still running, advancing
    the model's state in place; keep(rows (B',) int64): keep only those rows of the model's state
    (called when rows finish; None: the state is kept whole and finished rows keep stepping);
    prompt: (B, T0) checked int64; u: None or (B, N) checked uniforms on the logits' device.
    Returns (B, T0 + n) int64: the prompt followed by the new tokens, pad after eos.
    Call under inference_mode.
    """
    B, T0 = prompt.shape
    V, N = logits.shape[-1], int(max_new_tokens)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    process_list = [as_processor(p) for p in processors]
    if (eos_token_id or stop_sequences) and pad_token_id is None:
        raise ValueError("pad_token_id: expected an id for the rows that have finished, got None")
    device = logits.device
    out = torch.empty((B, T0 + N), dtype=torch.int64, device=device)  # (B, T0+N)
    out[:, :T0] = prompt
    maxima = []  # per step, the row maxima after the processors: validated after the loop
    stopping = bool(eos_token_id or stop_sequences)
    eos = torch.tensor(eos_token_id or (), dtype=torch.int64, device=device)
    active = torch.arange(B, device=device)  # the rows still running, in the model's batch order
    finished_at = torch.full((B,), T0 + N, dtype=torch.int64, device=device)  # the first pad column
    n_run = 0
    for n in range(N):
        running = active.shape[0]
        ids = out[:, : T0 + n] if running == B else out[active, : T0 + n]  # (B', T0+n)
        u_n = None if u is None else (u[:, n] if running == B else u[active, n])
        token, m = _choose(logits.to(dtype), process_list, ids, u_n, running, V)
        maxima.append(m)
        out[active, T0 + n] = token
        n_run = n + 1
        if stopping:
            done = torch.isin(token, eos)
            if stop_sequences:
                done |= ends_with(torch.cat([ids, token[:, None]], dim=1), stop_sequences)
            if bool(done.any()):  # the host sync of a step with eos
                first = active[done]
                finished_at[first] = torch.minimum(finished_at[first], torch.full_like(first, T0 + n + 1))
                if keep is None:  # the model keeps every row: a finished row feeds pad
                    over = finished_at[active] <= T0 + n + 1
                    if bool(over.all()):
                        break
                    token = torch.where(over, pad_token_id, token)
                else:
                    still = (~done).nonzero()[:, 0]
                    if still.numel() == 0:
                        break
                    active, token = active[still], token[still]
                    keep(still)
        if n + 1 < N:
            logits = step(token)  # (B', V)
    row_max = torch.cat(maxima) if maxima else torch.zeros(0, dtype=torch.float64, device=device)
    bad = ~torch.isfinite(row_max)
    if bool(bad.any()):  # the one host sync of a loop without eos
        first = int(bad.nonzero()[0, 0])
        sizes = torch.tensor([m.shape[0] for m in maxima]).cumsum(0)
        n = int((sizes <= first).sum())
        raise ValueError(f"logits: {sampling.row_problem(row_max[first : first + 1])} "
                         f"(generation step {n}, after processors)")  # fmt: skip
    out = out[:, : T0 + n_run]
    if stopping:
        columns = torch.arange(T0 + n_run, device=device)[None, :]
        out = torch.where(columns >= finished_at[:, None], pad_token_id, out)
    return out
