"""The one tolerance table of the differential tests.

It lives in `reference.checks` (so users comparing their own implementation with
the reference get the same rules); this module re-exports it for the tests.

    float64   elementwise |fast - ref| <= 1e-10 + 1e-10 |ref|
    float32   |fast - ref| <= 3 max |naive - ref| + 1e-5 + 2^-23 |ref|
              (naive: the reference itself run in float32 NumPy)
    bfloat16  |fast - ref| <= 3 max |naive - ref| + 1e-2 + 2^-7 |ref|
              (naive: the fast path's unfused attn_impl="math"; NumPy has no bfloat16)

Generated tokens (`compare_tokens`): every token in float64; in low precision every
token whose reference margin is at least 4x its measured flip bound, and at least
MIN_JUDGED of them (float32 50%, bfloat16 25% greedy / 10% sampled, for >= 20 tokens).
"""

from chainrule.reference.checks import (
    MIN_JUDGED,
    TOLERANCES,
    Comparison,
    Tolerance,
    TokenComparison,
    assert_close,
    compare,
    compare_tokens,
    tolerance,
)

__all__ = ["TOLERANCES", "Tolerance", "Comparison", "tolerance", "compare", "assert_close",
           "MIN_JUDGED", "TokenComparison", "compare_tokens"]  # fmt: skip
