"""Padded batches against HF transformers' GPT-2: attention_mask and position_ids.

The same random tiny float64 GPT2LMHeadModel as test_hf_gpt2.py. A batch of rows of
different lengths, left- or right-padded: chainrule's forward(attention_mask) gives, at every
real position, the logits of HF's forward given the mask *and* the position ids HF's
generate derives (cumsum(mask) - 1, pads at 1), to LOGIT_ATOL; and those are the logits of
each row alone. HF's forward given the mask but no position_ids counts positions over the
pads: the oracle catches it (`compare_padding` fails, by more than 1 in the logits).
`log_prob` of a padded batch equals HF's cross-entropy of each row alone.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="HF transformers is not installed (peers extra)")

from chainrule.fast import gpt as fast_gpt  # noqa: E402
from chainrule.reference import gpt as ref_gpt  # noqa: E402
from chainrule.reference.checks import assert_close, assert_padding_invariant, compare_padding  # noqa: E402
from diff_tests.peers.test_hf_gpt2 import LOGIT_ATOL, hf_model, loaded  # noqa: E402,F401

PAD = 0
ROWS = [[5, 9, 2, 44, 17, 3, 8], [11, 31, 7], [50, 4, 4, 21, 6]]


def padded(side: str):
    """The rows of ROWS padded to one length on `side` -> (tokens (3, 7), mask (3, 7))."""
    T = max(len(r) for r in ROWS)
    tokens = np.full((len(ROWS), T), PAD, dtype=np.int64)
    mask = np.zeros((len(ROWS), T), dtype=np.int64)
    for b, row in enumerate(ROWS):
        start = T - len(row) if side == "left" else 0
        tokens[b, start : start + len(row)] = row
        mask[b, start : start + len(row)] = 1
    return tokens, mask


def hf_positions(mask):
    """Position ids as HF's generate derives them from the attention mask."""
    return np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)


def hf_forward(model, tokens, mask, position_ids=True):
    with torch.no_grad():
        kw = {"position_ids": torch.from_numpy(hf_positions(mask))} if position_ids else {}
        return model(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask), **kw).logits.numpy()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_logits_match_hf_with_position_ids(hf_model, loaded, side):
    params, config = loaded
    tokens, mask = padded(side)
    want = hf_forward(hf_model, tokens, mask)
    real = mask.astype(bool)
    for name, got in (("reference", ref_gpt.forward(params, config, tokens, mask)),
                      ("fast", fast_gpt.forward(params, config, torch.from_numpy(tokens), torch.from_numpy(mask)).numpy())):  # fmt: skip
        c = assert_close(f"{side}-padded logits at real positions vs HF", want[real], got[real], "float64")
        assert c.max_err <= LOGIT_ATOL, str(c)
        assert np.all(got[~real] == 0.0), "pad positions' logits are defined as 0"
        print(f"[{name} vs HF, {side} padding] {c}")


def test_padded_rows_equal_the_rows_alone(loaded):
    """At real positions, the padded batch is each row on its own (HF with position ids agrees, above)."""
    params, config = loaded
    for side in ("left", "right"):
        tokens, mask = padded(side)
        got = ref_gpt.forward(params, config, tokens, mask)
        for b, row in enumerate(ROWS):
            alone = ref_gpt.forward(params, config, np.array([row]))[0]
            assert_close(f"row {b} {side}-padded vs alone", alone, got[b][mask[b] == 1], "float64")


def test_hf_forward_without_position_ids_is_caught(hf_model):
    """HF's own forward with left padding and no position_ids is wrong; with them it is invariant."""
    tokens = np.array([r[:3] for r in ROWS], dtype=np.int64)
    wrong = compare_padding(lambda x, m: hf_forward(hf_model, x, m, position_ids=False), tokens)
    assert not wrong.passed and wrong.worst["left"] > 1.0, str(wrong)
    assert wrong.worst["right"] < 1e-9, str(wrong)  # right padding leaves the real positions' ids alone
    right = assert_padding_invariant(lambda x, m: hf_forward(hf_model, x, m), tokens)
    print(wrong, right, sep="\n")


def test_padded_log_prob_matches_hf_rows_alone(hf_model, loaded):
    """log_prob over real tokens only = HF's summed cross-entropy of each row alone (bos prepended)."""
    params, config = loaded
    for side in ("left", "right"):
        tokens, mask = padded(side)
        got = ref_gpt.log_prob(params, config, tokens, mask)
        got_fast = fast_gpt.log_prob(params, config, torch.from_numpy(tokens), torch.from_numpy(mask)).numpy()
        for b, row in enumerate(ROWS):
            x = np.array([[config.bos_token] + row])
            with torch.no_grad():
                logits = hf_model(torch.from_numpy(x)).logits[0, :-1]
                want = -torch.nn.functional.cross_entropy(logits, torch.from_numpy(x[0, 1:]), reduction="sum").item()
            assert_close(f"log_prob row {b} ({side})", np.array(want), np.array(got[b]), "float64")
            assert_close(f"fast log_prob row {b} ({side})", np.array(want), np.array(got_fast[b]), "float64")
