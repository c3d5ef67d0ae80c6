"""Causality of sequence models as the full dependency structure, measured bit for bit.

`dependency_matrix` perturbs the input at one position at a time and records which output
positions change by even one bit; `assert_causal` asserts that output t depends only on
inputs <= t - shift (and, with full=True, on all of them), with a suffix-perturbation
experiment on top. Image models have their own, channel-aware version in `images`.
"""

from __future__ import annotations

import numpy as np

from chainrule.reference.checks.arrays import _restore, _to_numpy


# ----------------------------------------------------------------------------- causality


def _changed(base: np.ndarray, out: np.ndarray, time_axis: int) -> np.ndarray:
    """(T,) bool: which positions along `time_axis` differ bit for bit (NaN equals NaN)."""
    if base.shape != out.shape:
        raise ValueError(f"fn: expected the same output shape for every input, got {base.shape} and {out.shape}")
    diff = (base != out) & ~(np.isnan(base) & np.isnan(out))
    diff = np.moveaxis(diff, time_axis, 0)
    return diff.reshape(diff.shape[0], -1).any(axis=1)


def _perturb(x: np.ndarray, positions, rng, vocab_size, noise) -> np.ndarray:
    """A copy of x (B, T, ...) with every entry at the given time positions changed:
    integer tokens move to a different id in [0, vocab_size), floats get N(0, noise^2) added."""
    y = x.copy()
    part = y[:, positions]
    if np.issubdtype(x.dtype, np.integer):
        y[:, positions] = (part + rng.integers(1, vocab_size, size=part.shape)) % vocab_size
    else:
        y[:, positions] = part + noise * rng.standard_normal(part.shape)
    return y


def _check_inputs(x, vocab_size):
    xn = _to_numpy(x)
    if xn.ndim < 2:
        raise ValueError(f"x: expected shape (B, T, ...), got {xn.shape}")
    if np.issubdtype(xn.dtype, np.integer):
        if vocab_size is None or vocab_size < 2:
            raise ValueError(f"vocab_size: expected an int >= 2 for integer inputs, got {vocab_size!r}")
    elif not np.issubdtype(xn.dtype, np.floating):
        raise ValueError(f"x: expected integer tokens or floats, got dtype {xn.dtype}")
    return xn


def dependency_matrix(fn, x, *, vocab_size=None, n_trials=2, seed=0, noise=1.0, time_axis=1) -> np.ndarray:
    """The dependency structure of a sequence function, measured bit for bit.

    fn: x (B, T_in, ...) -> outputs with a time axis `time_axis` of length T_out
        (e.g. tokens (B, T) -> logits (B, T, V)). NumPy, CuPy or torch in and out.
    x: integer tokens (then `vocab_size` is required: a perturbed token moves to a
       different id) or floats (perturbed by N(0, noise^2)).

    Returns D, a (T_out, T_in) bool matrix: D[t_out, t_in] is True when changing the
    inputs at position t_in (in every batch row, `n_trials` random times) changed
    any output at position t_out by even one bit.

    For a GPT, D must be exactly lower triangular (diagonal included), and for a
    generic model it is the full lower triangle:

        >>> import numpy
        >>> x = numpy.array([[0, 1, 2]])
        >>> dependency_matrix(lambda t: numpy.cumsum(t, axis=1), x, vocab_size=3).astype(int)
        array([[1, 0, 0],
               [1, 1, 0],
               [1, 1, 1]])
    """
    xn = _check_inputs(x, vocab_size)
    rng = np.random.default_rng(seed)
    base = _to_numpy(fn(x))
    T_in, T_out = xn.shape[1], base.shape[time_axis]
    D = np.zeros((T_out, T_in), dtype=bool)
    for t_in in range(T_in):
        for _ in range(n_trials):
            xp = _perturb(xn, [t_in], rng, vocab_size, noise)
            D[:, t_in] |= _changed(base, _to_numpy(fn(_restore(xp, x))), time_axis)
    return D


def format_dependency_matrix(D: np.ndarray) -> str:
    """D as a grid of 0/1, rows = output positions, columns = input positions."""
    rows = ["out\\in " + " ".join(str(j % 10) for j in range(D.shape[1]))]
    rows += [f"{i:>6} " + " ".join("1" if d else "." for d in row) for i, row in enumerate(D)]
    return "\n".join(rows)


def allowed_dependencies(T_out: int, T_in: int, shift: int = 0) -> np.ndarray:
    """(T_out, T_in) bool: output t may depend on input s iff s <= t - shift."""
    return np.arange(T_in)[None, :] <= np.arange(T_out)[:, None] - shift


def assert_causal(
    fn, x, *, shift=0, full=False, vocab_size=None, n_trials=2, seed=0, noise=1.0, time_axis=1, name=None
) -> np.ndarray:
    """Assert that output position t depends only on input positions <= t - shift, bit for bit.

    shift=0: the GPT convention -- logits[:, t] may depend on tokens[:, :t+1]
             (they predict token t+1).
    shift=1: strictly previous inputs -- e.g. a PixelCNN/WaveNet output at t, or a
             per-token log-likelihood term log p(x_t | x_<t) seen as a function of x
             *excluding* x_t itself.

    Two experiments, both exact:
      1. the dependency matrix (`dependency_matrix`): single positions perturbed;
      2. suffix perturbation: for each s, every input at positions >= s is perturbed
         at once; outputs at positions < s + shift must not change by one bit.
    full=True also asserts every allowed dependency is present (a generic model's
    output t depends on *all* of its allowed inputs: a truncated context is a bug too).

    AssertionError names the first violating (output position, input position) and
    prints the measured matrix. Returns the dependency matrix.

        assert_causal(lambda tok: my_model(tok), tokens, vocab_size=V)            # GPT-style
        assert_causal(lambda img: my_pixelcnn(img), x, shift=1, vocab_size=256)   # strictly previous
    """
    name = name or getattr(fn, "__qualname__", repr(fn))
    xn = _check_inputs(x, vocab_size)
    D = dependency_matrix(fn, x, vocab_size=vocab_size, n_trials=n_trials, seed=seed, noise=noise,
                          time_axis=time_axis)  # fmt: skip
    T_out, T_in = D.shape
    allowed = allowed_dependencies(T_out, T_in, shift)
    bad = np.argwhere(D & ~allowed)
    if bad.size:
        t_out, t_in = (int(i) for i in bad[0])
        raise AssertionError(
            f"{name} is not causal (shift={shift}): output position {t_out} changed when the input at "
            f"position {t_in} was perturbed (allowed: inputs at positions <= {t_out - shift}).\n"
            f"Dependency matrix (1 = output depends on input):\n{format_dependency_matrix(D)}"
        )
    rng = np.random.default_rng(seed + 1)
    base = _to_numpy(fn(x))
    for s in range(T_in):
        for _ in range(n_trials):
            xp = _perturb(xn, list(range(s, T_in)), rng, vocab_size, noise)
            changed = _changed(base, _to_numpy(fn(_restore(xp, x))), time_axis)
            protected = np.flatnonzero(changed[: max(0, min(T_out, s + shift))])
            if protected.size:
                raise AssertionError(
                    f"{name} is not causal (shift={shift}): perturbing every input at positions >= {s} "
                    f"changed the output at position {int(protected[0])} (outputs at positions < {s + shift} "
                    f"must stay bit-for-bit unchanged)."
                )
    if full:
        missing = np.argwhere(allowed & ~D)
        if missing.size:
            t_out, t_in = (int(i) for i in missing[0])
            raise AssertionError(
                f"{name} ignores part of its context: output position {t_out} does not depend on the input "
                f"at position {t_in} (allowed with shift={shift}, and a generic model uses it).\n"
                f"Dependency matrix (1 = output depends on input):\n{format_dependency_matrix(D)}"
            )
    return D
