"""reference.metrics vs fast.metrics: the same numbers from NumPy and from torch log-probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chainrule.fast import metrics as fast_metrics
from chainrule.reference import metrics as ref_metrics


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_metrics_agree(dtype):
    log_probs = np.random.default_rng(0).normal(-40.0, 5.0, size=7)
    n_tokens = np.arange(3, 10)
    lp = torch.as_tensor(log_probs, dtype=dtype)
    exact = lp.double().numpy()  # the values the torch side really holds
    assert math.isclose(fast_metrics.nll(lp), ref_metrics.nll(exact), rel_tol=1e-14)  # summation order differs
    assert math.isclose(fast_metrics.perplexity(lp, torch.as_tensor(n_tokens)),
                        ref_metrics.perplexity(exact, n_tokens), rel_tol=1e-15)  # fmt: skip
    assert fast_metrics.bits_per_dim(40.0, 13) == ref_metrics.bits_per_dim(40.0, 13)
    np.testing.assert_array_equal(fast_metrics.bits_per_dim(-lp, 13).numpy(), ref_metrics.bits_per_dim(-exact, 13))


@pytest.mark.parametrize("module", [ref_metrics, fast_metrics], ids=["reference", "fast"])
def test_metrics_reject_bad_counts(module):
    with pytest.raises(ValueError, match="n_tokens"):
        module.perplexity(np.zeros(2) if module is ref_metrics else torch.zeros(2), 0)
    with pytest.raises(ValueError, match="n_dims"):
        module.bits_per_dim(1.0, 0)
