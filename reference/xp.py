"""Array-namespace helper: NumPy, or CuPy when the inputs live on a GPU.

Reference code never names a library directly; it asks for the namespace of
its inputs::

    xp = namespace(x, w)
    y = xp.tanh(x @ w)

so the same specification runs on the CPU (NumPy) and on a GPU (CuPy), in
float64 on both.
"""

from __future__ import annotations

import importlib
import types

import numpy

_cupy = None
_cupy_checked = False


def cupy_module():
    """The `cupy` module if it imports and sees a GPU, else None."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            cp = importlib.import_module("cupy")
            if cp.cuda.runtime.getDeviceCount() > 0:
                _cupy = cp
        except Exception:  # not installed, no driver, no device
            _cupy = None
    return _cupy


def is_cupy(a) -> bool:
    """True when `a` is a CuPy array (without importing CuPy when absent)."""
    return type(a).__module__.split(".")[0] == "cupy"


def namespace(*arrays) -> types.ModuleType:
    """The array module of the inputs: `cupy` if any input is a CuPy array, else `numpy`.

    Scalars, lists and None are ignored. Mixing CuPy and NumPy arrays is allowed
    only in the sense that CuPy wins: NumPy inputs are moved by `asarray`.
    """
    for a in arrays:
        if is_cupy(a):
            return importlib.import_module("cupy")
        if isinstance(a, dict):
            for v in a.values():
                if is_cupy(v):
                    return importlib.import_module("cupy")
    return numpy


def special(xp):
    """scipy.special for NumPy, cupyx.scipy.special for CuPy (for erf)."""
    if xp is numpy:
        return importlib.import_module("scipy.special")
    return importlib.import_module("cupyx.scipy.special")


def to_numpy(a):
    """A NumPy copy of a NumPy or CuPy array (or anything `numpy.asarray` takes)."""
    if is_cupy(a):
        return a.get()
    return numpy.asarray(a)


def asarray(a, like):
    """`a` as an array of the namespace of `like`."""
    return namespace(like).asarray(a)
