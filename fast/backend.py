"""Backends: where and in what precision a computation runs, and moving parameters there.

A backend is a (library, device, dtype) triple with a name used everywhere a
test, a report or the CLI speaks of one:

    torch-cpu-f64    the fast path in float64 on the CPU (agrees with the reference to ~1e-12)
    torch-cpu-f32    the fast path in float32 on the CPU
    torch-cuda-f32   the fast path in float32 on a CUDA device
    torch-cuda-bf16  the fast path in bfloat16 on a CUDA device
    cupy-f64         the *reference* code itself run on CuPy arrays (the spec checked on a GPU)

Parameters are flat dicts of arrays (see reference/gpt.py); `to_torch` and
`from_torch` move them between NumPy/CuPy and torch.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import numpy
import torch

from chainrule.reference.xp import cupy_module, is_cupy, to_numpy

_TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Backend:
    """One way to run a model: `kind` ("torch" | "cupy") on `device` ("cpu" | "cuda") in `dtype`."""

    name: str
    kind: str
    device: str
    dtype: str

    def __post_init__(self):
        if self.kind not in ("torch", "cupy"):
            raise ValueError(f"Backend.kind: expected 'torch' or 'cupy', got {self.kind!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"Backend.device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in _TORCH_DTYPES:
            raise ValueError(f"Backend.dtype: expected one of {sorted(_TORCH_DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of `dtype` (torch.float64, torch.float32 or torch.bfloat16)."""
        return _TORCH_DTYPES[self.dtype]

    def __str__(self) -> str:
        return self.name


ALL_BACKENDS = (
    Backend("torch-cpu-f64", "torch", "cpu", "float64"),
    Backend("torch-cpu-f32", "torch", "cpu", "float32"),
    Backend("torch-cuda-f32", "torch", "cuda", "float32"),
    Backend("torch-cuda-bf16", "torch", "cuda", "bfloat16"),
    Backend("cupy-f64", "cupy", "cuda", "float64"),
)
BACKENDS = {b.name: b for b in ALL_BACKENDS}


def get(backend) -> Backend:
    """A Backend from itself or its name; ValueError naming the known names otherwise."""
    if isinstance(backend, Backend):
        return backend
    if backend in BACKENDS:
        return BACKENDS[backend]
    raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")


def available(backend) -> tuple[bool, str]:
    """(True, "") if `backend` can run on this machine, else (False, the reason).

    Asked once per backend and process (cached): the answer comes from torch's and CuPy's
    view of the CUDA devices, which does not change while a process runs.
    """
    return _available(get(backend))


@functools.cache
def _available(b: Backend) -> tuple[bool, str]:
    if b.kind == "cupy":
        if cupy_module() is None:
            if importlib.util.find_spec("cupy") is None:
                return False, "CuPy not installed"
            return False, "CuPy sees no CUDA device"
        return True, ""
    if b.device == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
                return False, "CPU-only torch build"
            return False, "no CUDA device visible to torch"
        if b.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return False, "the CUDA device does not support bfloat16"
    return True, ""


def available_backends() -> tuple[Backend, ...]:
    """The backends of ALL_BACKENDS that can run here, in their order."""
    return tuple(b for b in ALL_BACKENDS if available(b)[0])


def unavailable_backends() -> dict[str, str]:
    """Backend name -> the reason it cannot run here, for each one that cannot."""
    return {b.name: reason for b in ALL_BACKENDS for ok, reason in [available(b)] if not ok}


def devices() -> list[str]:
    """The torch devices present: ["cpu"], plus "cuda" when torch sees a GPU."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _tensor(a, device, dtype) -> torch.Tensor:
    """One array (NumPy, CuPy, torch, or anything numpy.asarray takes) as a torch tensor:
    floating -> `dtype`, integer -> int64, bool stays bool; on `device`."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif is_cupy(a):
        t = torch.from_dlpack(a)
    else:
        t = torch.from_numpy(numpy.array(a))  # a copy: the tensor never aliases the caller's array
    if t.is_floating_point():
        target = dtype
    elif t.dtype == torch.bool:
        target = torch.bool
    elif t.is_complex():
        raise ValueError(f"params: expected real arrays, got dtype {t.dtype}")
    else:
        target = torch.int64
    return t.to(device=device, dtype=target).contiguous()


def to_torch(params, device="cpu", dtype=torch.float64):
    """Parameters as torch tensors on `device`: a dict name -> array (or one array).

    Floating arrays are cast to `dtype` (a torch dtype or one of "float64",
    "float32", "bfloat16"), integer arrays become int64. Inputs may be NumPy, CuPy or
    torch. NumPy inputs are copied; a torch tensor already on `device` in `dtype`
    is returned as it is (detached), without a copy.
    """
    if isinstance(dtype, str):
        if dtype not in _TORCH_DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(_TORCH_DTYPES)} or a torch dtype, got {dtype!r}")
        dtype = _TORCH_DTYPES[dtype]
    if isinstance(params, dict):
        return {name: _tensor(value, device, dtype) for name, value in params.items()}
    return _tensor(params, device, dtype)


def _array(t) -> numpy.ndarray:
    if not isinstance(t, torch.Tensor):
        return numpy.asarray(t)
    t = t.detach().to("cpu")
    if t.is_floating_point():
        return t.to(torch.float64).numpy()
    return t.numpy()


def from_torch(tree):
    """torch tensors back to NumPy: floating -> float64, others keep their dtype (int64 stays int64).

    Takes a dict name -> tensor, a tuple/list of tensors, or a single tensor.
    """
    if isinstance(tree, dict):
        return {name: _array(value) for name, value in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_array(value) for value in tree)
    return _array(tree)


PARAM_DTYPES = (torch.float64, torch.float32, torch.bfloat16)


def checked_tensors(params, check, anchor: str, name: str = "params") -> dict:
    """A model's params as torch tensors of one float dtype on one device, for the fast paths.

    NumPy params (or any non-torch arrays) become float64 torch tensors on the CPU (CuPy
    arrays: on CUDA); `check(params)` then enforces the reference's parameter contract (names
    and shapes); every tensor must share the dtype (float64, float32 or bfloat16) and the
    device of params[anchor]. ValueError naming the key otherwise.
    """
    if not isinstance(params, dict):
        raise ValueError(f"{name}: expected a dict name -> array, got {type(params).__name__}")
    if not all(isinstance(value, torch.Tensor) for value in params.values()):
        on_gpu = any(is_cupy(value) for value in params.values())
        params = to_torch(params, device="cuda" if on_gpu else "cpu", dtype=torch.float64)
    check(params)
    ref = params[anchor]
    if ref.dtype not in PARAM_DTYPES:
        raise ValueError(f"{name}[{anchor!r}]: expected dtype float64, float32 or bfloat16, got {ref.dtype}")
    for key, value in params.items():
        if value.dtype != ref.dtype or value.device != ref.device:
            raise ValueError(f"{name}[{key!r}]: expected {ref.dtype} on {ref.device} (as {name}[{anchor!r}]), "
                             f"got {value.dtype} on {value.device}")  # fmt: skip
    return params


def checked_tokens(tokens, vocab_size: int, reference_check, name: str = "tokens", device=None, min_len: int = 1,
                   max_len: int | None = None) -> torch.Tensor:  # fmt: skip
    """A model's token check for torch tensors too -> tokens as int64 on `device` (default: theirs).

    Non-torch tokens go through `reference_check()` (the reference model's check_tokens, with
    its messages) and are converted. A tensor must be (B, T) integer, min_len <= T (<= max_len
    when given), ids in [0, vocab_size): ValueError naming `name` otherwise (one host sync).
    """
    if not isinstance(tokens, torch.Tensor):
        reference_check()
        return torch.as_tensor(to_numpy(tokens), dtype=torch.int64, device=device)
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer array, got {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"{name}: expected shape (B, T), got {tuple(tokens.shape)}")
    T = tokens.shape[1]
    if max_len is None and T < min_len:
        raise ValueError(f"{name}: expected length T >= {min_len}, got T={T}")
    if max_len is not None and not min_len <= T <= max_len:
        raise ValueError(f"{name}: expected length T in [{min_len}, {max_len}], got T={T}")
    if tokens.numel():
        low, high = (int(v) for v in torch.aminmax(tokens))  # one host sync
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name}: token ids must lie in [0, {vocab_size}), got {low if low < 0 else high}")
    return tokens.to(device=device if device is not None else tokens.device, dtype=torch.int64)
