"""The one tolerance table of the differential tests.

It lives in `reference.checks` (so users comparing their own implementation with
the reference get the same rules); this module re-exports it for the tests.

    float64   elementwise |fast - ref| <= 1e-10 + 1e-10 |ref|
    float32   max |fast - ref| <= 3 max |naive - ref| + 1e-5   (naive: same dtype, no fusion)
    bfloat16  max |fast - ref| <= 3 max |naive - ref| + 1e-2
"""

from reference.checks import TOLERANCES, Comparison, Tolerance, assert_close, compare, tolerance

__all__ = ["TOLERANCES", "Tolerance", "Comparison", "tolerance", "compare", "assert_close"]
