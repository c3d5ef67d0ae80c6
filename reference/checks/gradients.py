"""Gradients by float64 finite differences: the truth autograd is compared with.

`finite_difference_grad` takes central differences with one Richardson step, picking the
step whose estimate is most self-consistent, and reports that estimate's error: compare with
autograd under the float64 tolerance only when it is within FD_ACCURACY.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chainrule.reference.checks.tolerances import TOLERANCES


# ----------------------------------------------------------------------------- gradients by finite differences

# Steps tried by `finite_difference_grad`; the one whose estimate is most self-consistent wins.
FD_STEPS = (1e-3, 3e-4, 1e-4)
# A finite-difference truth that judges float64 gradients must be accurate to half the
# float64 atol, so that a failure is the implementation's error, not the truth's.
FD_ACCURACY = TOLERANCES["float64"].atol / 2


@dataclass(frozen=True)
class FiniteDifference:
    """A derivative estimated by `finite_difference_grad`."""

    value: float  # the estimate R(h)
    error: float  # |R(h) - R(2h)|, an (over)estimate of its error
    step: float  # the h it came from


def finite_difference_grad(f, params: dict, name: str, index, steps=FD_STEPS) -> FiniteDifference:
    """d f(params) / d `params[name][index]` of a float64 function, by central differences
    with one Richardson step:

        D(h) = (f(x + h) - f(x - h)) / 2h          error O(h^2)
        R(h) = (4 D(h/2) - D(h)) / 3               error O(h^4)

    Truncation error falls with h, rounding error (~ 1e-16 |f| / h) grows: of `steps`,
    the h where R moves least when h doubles is kept. f: params (dict of NumPy arrays)
    -> float; it gets shifted copies, `params` is not modified. Compare with autograd
    under the float64 tolerance only if `error` <= FD_ACCURACY.

        fd = finite_difference_grad(lambda p: -gpt.log_prob(p, config, x).mean(), params, "wpe", (0, 1))
    """
    if name not in params:
        raise ValueError(f"name: expected one of the parameter names {sorted(params)}, got {name!r}")
    index = tuple(index) if isinstance(index, (tuple, list)) else (index,)
    if len(index) != np.ndim(params[name]):
        raise ValueError(f"index: expected {np.ndim(params[name])} coordinates for {name!r}, got {index}")

    def f_shifted(delta):
        shifted = dict(params)
        shifted[name] = np.array(params[name], dtype=np.float64)
        shifted[name][index] += delta
        return float(f(shifted))

    best = None
    for h in steps:
        D = {s: (f_shifted(s) - f_shifted(-s)) / (2 * s) for s in (h / 2, h, 2 * h)}
        R, R2 = (4 * D[h / 2] - D[h]) / 3, (4 * D[h] - D[2 * h]) / 3
        if best is None or abs(R - R2) < best.error:
            best = FiniteDifference(R, abs(R - R2), h)
    return best
