"""Shared fixtures for the differential tests: one `backend` fixture over every
available backend of `fast.backend.ALL_BACKENDS`, and `Side`, which runs "the fast side" of a
backend on the same float64 NumPy parameters the reference gets.

    torch-*   fast.gpt / fast.sampling on torch tensors of the backend's device and dtype
    cupy-f64  the reference itself on CuPy arrays (the spec, checked on the GPU)

Every result comes back as a float64 (or int64) NumPy array, compared with
`reference.checks.assert_close` against the float64 NumPy truth. A backend that
cannot run here is not collected; the report names it once, with the reason
`fast.backend.available` gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chainrule.fast import backend as fb
from chainrule.fast import gpt as fast_gpt
from chainrule.fast import sampling as fast_sampling
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import sampling as ref_sampling
from chainrule.reference.checks import as_float64, assert_close, logits_through_cache, naive_float32

# ----------------------------------------------------------------------------- backends


@pytest.fixture(params=fb.available_backends(), ids=lambda b: b.name)
def backend(request):
    """Each backend of fast.backend.ALL_BACKENDS that can run here. The others are not
    collected at all (nothing to run, nothing to skip): the root conftest.py names them,
    with their reasons, in one line of the report."""
    return request.param


@pytest.fixture
def side(backend):
    return Side(backend)


class Side:
    """The fast side of one backend, fed float64 NumPy parameters and NumPy tokens,
    returning NumPy arrays."""

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name
        self.dtype = backend.dtype  # "float64" | "float32" | "bfloat16"
        self.is_cupy = backend.kind == "cupy"
        if self.is_cupy:
            import cupy

            self.cp = cupy

    @property
    def low_precision(self) -> bool:
        return self.dtype != "float64"

    # conversions
    def params(self, params: dict) -> dict:
        if self.is_cupy:
            return {k: self.cp.asarray(v) for k, v in params.items()}
        return fb.to_torch(params, self.backend.device, self.backend.torch_dtype)

    def array(self, a, dtype=None):
        """A NumPy array on this backend (ints stay int64, floats get the backend dtype)."""
        a = np.asarray(a)
        if self.is_cupy:
            return self.cp.asarray(a)
        if np.issubdtype(a.dtype, np.integer):
            return torch.as_tensor(a, dtype=torch.int64, device=self.backend.device)
        return torch.as_tensor(a, device=self.backend.device).to(dtype or self.backend.torch_dtype)

    @staticmethod
    def numpy(a) -> np.ndarray:
        if type(a).__module__.split(".")[0] == "torch":
            if a.is_floating_point():
                return as_float64(a)
            return a.detach().cpu().numpy()
        if type(a).__module__.split(".")[0] == "cupy":
            return a.get()
        return np.asarray(a)

    # the model
    def forward(self, P, config, tokens, naive=False):
        if self.is_cupy:
            return self.numpy(ref_gpt.forward(P, config, self.array(tokens)))
        return self.numpy(fast_gpt.forward(P, config, self.array(tokens), attn_impl="math" if naive else "sdpa"))

    def log_prob(self, P, config, tokens, naive=False):
        if self.is_cupy:
            return self.numpy(ref_gpt.log_prob(P, config, self.array(tokens)))
        return self.numpy(fast_gpt.log_prob(P, config, self.array(tokens), attn_impl="math" if naive else "sdpa"))

    def naive_forward(self, P, config, tokens):
        """The naive same-dtype baseline (None in float64, where the elementwise rule applies)."""
        return self._naive(ref_gpt.forward, P, config, tokens, self.forward)

    def naive_log_prob(self, P, config, tokens):
        return self._naive(ref_gpt.log_prob, P, config, tokens, self.log_prob)

    def _naive(self, reference_fn, P, config, tokens, fast_fn):
        """float32: the spec itself run in float32 NumPy -- a computation independent of the fast
        path, so a float32 bug anywhere in fast/ (not only in attention) raises the fast error
        alone. bfloat16 (which NumPy lacks): the fast path's unfused `attn_impl="math"`."""
        if not self.low_precision or self.is_cupy:
            return None
        if self.dtype == "float32":
            return naive_float32(reference_fn, P, config, np.asarray(tokens))
        return fast_fn(P, config, tokens, naive=True)

    def cached_logits(self, P, config, tokens, chunks):
        """Logits of `tokens` through the KV cache: prefill chunk by chunk (sizes `chunks`,
        summing to at most T), then one `step` per remaining token. -> (B, T, V)."""
        return logits_through_cache(ref_gpt if self.is_cupy else fast_gpt, P, config, self.array(tokens), chunks)

    def generate(self, P, config, prompt, max_new_tokens, u=None, processors=()):
        m = ref_gpt if self.is_cupy else fast_gpt
        return self.numpy(m.generate(P, config, self.array(prompt), max_new_tokens, processors=processors, u=u))

    def sample(self, P, config, rng, prompt, max_new_tokens):
        m = ref_gpt if self.is_cupy else fast_gpt
        return self.numpy(m.sample(P, config, rng, self.array(prompt), max_new_tokens))

    # sampling
    @property
    def sampling(self):
        return ref_sampling if self.is_cupy else fast_sampling


def check(quantity: str, truth, got, side: Side, naive=None):
    """assert_close under the tolerance of the side's dtype; prints the comparison
    (visible with -s) so the worst errors reached can be read off a run."""
    result = assert_close(quantity, truth, got, side.dtype, naive=naive)
    print(f"[{side.name}] {result}")
    return result
