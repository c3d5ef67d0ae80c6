"""Purity and determinism: no input is mutated, and two calls on equal inputs agree bit for bit.

`assert_pure` deep-copies the arguments (arrays, tensors, containers, dataclasses, numpy
Generators), calls the function, compares the originals with the copies bit for bit, calls
it again on fresh copies and compares both outputs bit for bit (-0.0 and NaN payloads
included).
"""

from __future__ import annotations

import copy
import math

import numpy as np

from chainrule.reference.checks.arrays import _isnan, _module


# ----------------------------------------------------------------------------- purity


def _snapshot(obj):
    """An independent deep copy of arrays, tensors, containers and generators."""
    mod = _module(obj)
    if isinstance(obj, np.ndarray) or mod == "cupy":
        return obj.copy()
    if mod == "torch" and hasattr(obj, "detach"):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, _snapshot(v)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_snapshot(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return copy.deepcopy(obj)


def _first_diff_index(a: np.ndarray, b: np.ndarray):
    with np.errstate(invalid="ignore"):
        neq = (a != b) & ~(_isnan(a) & _isnan(b))
    idx = np.argwhere(neq)
    if idx.size:
        i = tuple(int(j) for j in idx[0])
        return f"first at index {i}: {a[i]!r} vs {b[i]!r}"
    return "same values, different bit patterns (-0.0 vs 0.0, or NaN payloads)"


def _diff(a, b, path: str) -> str | None:
    """A description of the first difference between a and b (bit for bit), or None."""
    if isinstance(a, np.random.Generator):
        return None  # explicit randomness: consuming it is the point
    if type(a) is not type(b):
        return f"{path}: type {type(a).__name__} vs {type(b).__name__}"
    mod = _module(a)
    if mod == "cupy":
        a, b = a.get(), b.get()
    if isinstance(a, np.ndarray):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path}: shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        if a.dtype == object:
            return None if np.array_equal(a, b) else f"{path}: object arrays differ"
        if np.ascontiguousarray(a).tobytes() != np.ascontiguousarray(b).tobytes():
            return f"{path}: values differ, {_first_diff_index(a, b)}"
        return None
    if mod == "torch" and hasattr(a, "detach"):
        import torch

        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return (f"{path}: shape/dtype/device {tuple(a.shape)} {a.dtype} {a.device} "
                    f"vs {tuple(b.shape)} {b.dtype} {b.device}")  # fmt: skip
        # a fresh dense copy: .contiguous() may keep a size-1 dimension's odd stride, which .view() refuses
        ac = torch.empty_like(a, device="cpu", memory_format=torch.contiguous_format).copy_(a.detach()).reshape(-1)
        bc = torch.empty_like(b, device="cpu", memory_format=torch.contiguous_format).copy_(b.detach()).reshape(-1)
        if not torch.equal(ac.view(torch.uint8), bc.view(torch.uint8)):
            an = ac.to(torch.float64).numpy() if ac.is_floating_point() else ac.numpy()
            bn = bc.to(torch.float64).numpy() if bc.is_floating_point() else bc.numpy()
            return f"{path}: values differ, {_first_diff_index(an.reshape(tuple(a.shape)), bn.reshape(tuple(b.shape)))}"
        return None
    if isinstance(a, dict):
        if list(a.keys()) != list(b.keys()):
            return f"{path}: keys {list(a.keys())} vs {list(b.keys())}"
        for k in a:
            d = _diff(a[k], b[k], f"{path}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float):
        same = (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
        return None if same else f"{path}: {a!r} vs {b!r}"
    if isinstance(a, (int, str, bytes, bool, type(None), complex, np.generic)):
        return None if a == b else f"{path}: {a!r} vs {b!r}"
    if hasattr(a, "__dict__"):
        return _diff(vars(a), vars(b), path)
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def assert_pure(fn, *args, **kwargs):
    """Assert that fn(*args, **kwargs) mutates none of its inputs and is deterministic.

    The inputs (NumPy/CuPy arrays, torch tensors, dicts, lists, tuples, dataclasses,
    numpy Generators) are deep-copied; fn is called on the originals, the originals
    are compared bit for bit with the copies, then fn is called again on fresh copies
    and both outputs must be bit-identical. A numpy Generator argument may be consumed
    (that is how randomness enters); the second call gets it in its original state,
    so it must reproduce the same draws. Returns the output of the first call.

        assert_pure(reference.gpt.forward, params, config, tokens)
        assert_pure(reference.gpt.sample, params, config, numpy.random.default_rng(0), prompt, 5)
    """
    name = getattr(fn, "__qualname__", repr(fn))
    saved_args, saved_kwargs = _snapshot(args), _snapshot(kwargs)
    out = fn(*args, **kwargs)
    d = _diff(saved_args, args, "args") or _diff(saved_kwargs, kwargs, "kwargs")
    if d:
        raise AssertionError(f"{name} mutated its input: {d} (before vs after the call)")
    again = fn(*_snapshot(saved_args), **_snapshot(saved_kwargs))
    d = _diff(out, again, "output")
    if d:
        raise AssertionError(f"{name} is not deterministic: two calls on equal inputs differ: {d}")
    return out
