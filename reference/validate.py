"""Argument and parameter validators: the bottom layer of chainrule.reference.

The models (reference/*.py) validate what they are given here, and so do the checks
(reference/checks/), which judge the models and therefore sit above them: a model never
imports the checks. This module imports nothing of the project (reference/xp.py, the
array namespace, is the only part it may use), so anything can import it without a cycle
(tests/test_package_shape.py keeps it so).

The convention it serves (DESIGN.md, Errors): a wrong shape, a missing or mis-shaped
parameter raises ValueError whose message names the argument, the expected and the actual.
"""

from __future__ import annotations


# ----------------------------------------------------------------------------- parameter dicts


def check_param_shapes(params, shapes: dict, name: str = "params") -> None:
    """The model protocol's parameter contract: `params` is a dict holding exactly the keys of
    `shapes` (name -> shape), each an array of that shape. ValueError naming the key otherwise."""
    if not isinstance(params, dict):
        raise ValueError(f"{name}: expected a dict name -> array, got {type(params).__name__}")
    for key, shape in shapes.items():
        if key not in params:
            raise ValueError(f"{name}: missing parameter {key!r} (expected shape {shape})")
        actual = tuple(getattr(params[key], "shape", ()))
        if actual != tuple(shape):
            raise ValueError(f"{name}[{key!r}]: expected shape {tuple(shape)}, got {actual}")
    extra = sorted(set(params) - set(shapes))
    if extra:
        raise ValueError(f"{name}: unexpected parameters {extra}")
