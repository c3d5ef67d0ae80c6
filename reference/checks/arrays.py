"""Array plumbing of the checks: NumPy, CuPy or torch in, float64 (or plain) NumPy out, and back.

Every check takes your arrays as they are -- NumPy or CuPy arrays, torch tensors on any
device and in any dtype -- and judges them as NumPy: `as_float64` is the exact upcast
(bfloat16 included); the private helpers convert without a cast (`_to_numpy`), convert a
perturbed NumPy input back to the kind, dtype and device of the original (`_restore`),
and measure |got - truth| with NaNs and infinities handled (`_abs_err`). torch and CuPy are
imported only when one of their arrays shows up.
"""

from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------- array plumbing


def _module(a) -> str:
    return type(a).__module__.split(".")[0]


def as_float64(a) -> np.ndarray:
    """A float64 NumPy copy of a NumPy/CuPy array, torch tensor (any device, any
    dtype, bfloat16 included), list or scalar. Exact for every float dtype."""
    if _module(a) == "torch":
        import torch

        return a.detach().to(device="cpu", dtype=torch.float64).numpy()
    if _module(a) == "cupy":
        a = a.get()
    return np.array(a, dtype=np.float64)


def _abs_err(truth: np.ndarray, got: np.ndarray) -> np.ndarray:
    """|got - truth|, with 0 where both are equal (equal infinities, or both NaN)
    and +inf where they cannot be compared (one NaN, or a mismatched infinity)."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - truth)
    same = (got == truth) | (np.isnan(got) & np.isnan(truth))
    err = np.where(same, 0.0, err)
    return np.where(np.isnan(err), np.inf, err)


def _restore(a: np.ndarray, like):
    """`a` (NumPy) converted back to the kind, dtype and device of `like`."""
    if _module(like) == "torch":
        import torch

        return torch.as_tensor(a).to(device=like.device, dtype=like.dtype)
    if _module(like) == "cupy":
        import cupy

        return cupy.asarray(a, dtype=like.dtype)
    return np.asarray(a, dtype=np.asarray(like).dtype)


def _to_numpy(a) -> np.ndarray:
    if _module(a) == "torch":
        return a.detach().cpu().numpy()
    if _module(a) == "cupy":
        return a.get()
    return np.asarray(a)


def _isnan(a: np.ndarray) -> np.ndarray:
    return np.isnan(a) if np.issubdtype(a.dtype, np.inexact) else np.zeros(a.shape, dtype=bool)
