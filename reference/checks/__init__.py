"""Checks: compare an implementation with the reference, and test the properties
every autoregressive model must have.

Three kinds of tools, all usable on *your own* implementation (NumPy, CuPy or
torch; torch is imported only when a torch tensor shows up):

1. Numerical agreement with a float64 truth, under the one tolerance table.
   float64 must agree elementwise: |got - truth| <= atol + rtol |truth|.
   Low precision is judged against the float64 truth *relative to a naive
   computation in the same dtype* (the rule of the FlashAttention tests,
   Dao et al. 2022):  |got - truth| <= k * max |naive - truth| + atol + eps |truth|,
   eps |truth| being one ulp of the answer in that dtype.
   Without a naive result, the elementwise atol + rtol rule of the table applies.

2. Exact properties, checked bit for bit where the math is exact:

   - causality as the full dependency structure (`dependency_matrix`,
     `assert_causal`): perturb the input at one position, see which output
     positions change;
   - normalization by enumeration (`enumerate_log_probs`, `assert_normalized`):
     for a tiny vocabulary, sum_x p(x) over all V**T sequences is 1;
   - purity and determinism (`assert_pure`): no input is mutated, and two calls
     on equal inputs return bit-identical outputs.

3. Generation and gradients:

   - generated tokens (`compare_tokens`, `assert_tokens`): greedy or sampled from
     shared uniforms, each token judged against the reference's choice given the
     same prefix; in low precision only where the reference is clear of a tie by
     more than the implementation's logit error can move it (MIN_JUDGED);
   - KV-cache equivalence (`logits_through_cache`: prefill in chunks + steps);
   - gradients against float64 finite differences (`finite_difference_grad`);
   - the naive float32 baseline of the low-precision rule (`naive_float32`).

A tour, on the reference GPT (put your implementation where `my_forward` is):

    >>> import numpy
    >>> from reference import gpt
    >>> config = gpt.Config(vocab_size=3, block_size=4, n_layer=1, n_head=2, n_embd=4)
    >>> params = gpt.random_params(config, numpy.random.default_rng(0))  # not gpt.init: see there
    >>> tokens = numpy.array([[0, 2, 1, 1], [1, 0, 0, 2]])
    >>> truth = gpt.forward(params, config, tokens)
    >>> def my_forward(p, tok):  # e.g. the model with float32-rounded weights
    ...     return gpt.forward({k: v.astype("float32").astype("float64") for k, v in p.items()}, config, tok)
    >>> assert_close("logits", truth, my_forward(params, tokens), "float32").passed
    True
    >>> assert_causal(lambda tok: my_forward(params, tok), tokens, vocab_size=3, full=True).astype(int)
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 1]])
    >>> round(assert_normalized(lambda x: gpt.log_prob(params, config, x), vocab_size=3, length=3), 12)
    1.0
    >>> out = assert_pure(gpt.sample, params, config, numpy.random.default_rng(0), tokens[:, :1], 3)

Why bit for bit: a model that is causal "up to 1e-7" reads the future. Masked
positions must contribute exact zeros (exp(-inf) = 0), so the outputs at
positions < t are the same floating-point numbers whatever the tokens at
positions >= t are, in every dtype.

The package, one module per topic (every name below is importable from
`chainrule.reference.checks` itself, as it was when the checks were one module):

    tolerances       the tolerance table (TOLERANCES, tolerance, dtype_name); compare, assert_close
    arrays           array plumbing: as_float64 (NumPy, CuPy or torch in, float64 NumPy out)
    tokens           generated tokens: compare_tokens, assert_tokens, JUDGE_FACTOR, MIN_JUDGED
    causality        dependency_matrix, assert_causal, allowed_dependencies
    normalization    enumerate_sequences, enumerate_log_probs, assert_normalized
    padding          compare_padding, assert_padding_invariant (padded batches)
    batch            batch_invariance, assert_batch_invariant (a row's outputs vs its batch companions)
    purity           assert_pure
    equivalence      naive_float32, logits_through_cache
    gradients        finite_difference_grad, FD_STEPS, FD_ACCURACY
    goodness_of_fit  sampler_goodness_of_fit (samplers, Pearson's chi-square)
    images           image_dependencies, receptive_field, assert_image_causal, draw_receptive_field
    speculative      speculative_sampler_test

check_param_shapes, the models' parameter contract, lives in reference/validate.py (the bottom
layer, which the models import instead of the checks) and is re-exported here.
"""

from __future__ import annotations

# The package's own parts (relative imports: at module level the checks import only NumPy,
# the standard library and themselves; torch, scipy, matplotlib and the models are imported
# inside the functions that need them).
from . import (
    arrays,
    batch,
    causality,
    equivalence,
    goodness_of_fit,
    gradients,
    images,
    normalization,
    padding,
    purity,
    speculative,
    tokens,
    tolerances,
)
from .. import validate

# reference/validate.py
check_param_shapes = validate.check_param_shapes

# tolerances.py
Tolerance = tolerances.Tolerance
TOLERANCES = tolerances.TOLERANCES
dtype_name = tolerances.dtype_name
tolerance = tolerances.tolerance
Comparison = tolerances.Comparison
compare = tolerances.compare
assert_close = tolerances.assert_close

# arrays.py
as_float64 = arrays.as_float64

# tokens.py
JUDGE_FACTOR = tokens.JUDGE_FACTOR
MIN_JUDGED = tokens.MIN_JUDGED
MIN_JUDGED_COUNT = tokens.MIN_JUDGED_COUNT
TokenComparison = tokens.TokenComparison
compare_tokens = tokens.compare_tokens
assert_tokens = tokens.assert_tokens

# causality.py
dependency_matrix = causality.dependency_matrix
format_dependency_matrix = causality.format_dependency_matrix
allowed_dependencies = causality.allowed_dependencies
assert_causal = causality.assert_causal

# normalization.py
enumerate_sequences = normalization.enumerate_sequences
enumerate_log_probs = normalization.enumerate_log_probs
assert_normalized = normalization.assert_normalized

# padding.py
PaddingComparison = padding.PaddingComparison
compare_padding = padding.compare_padding
assert_padding_invariant = padding.assert_padding_invariant

# batch.py
BatchInvariance = batch.BatchInvariance
batch_invariance = batch.batch_invariance
assert_batch_invariant = batch.assert_batch_invariant

# purity.py
assert_pure = purity.assert_pure

# equivalence.py
naive_float32 = equivalence.naive_float32
logits_through_cache = equivalence.logits_through_cache

# gradients.py
FD_STEPS = gradients.FD_STEPS
FD_ACCURACY = gradients.FD_ACCURACY
FiniteDifference = gradients.FiniteDifference
finite_difference_grad = gradients.finite_difference_grad

# goodness_of_fit.py
GoodnessOfFit = goodness_of_fit.GoodnessOfFit
sampler_goodness_of_fit = goodness_of_fit.sampler_goodness_of_fit

# images.py
image_dependencies = images.image_dependencies
receptive_field = images.receptive_field
image_order_keys = images.image_order_keys
allowed_image_dependencies = images.allowed_image_dependencies
assert_image_causal = images.assert_image_causal
draw_receptive_field = images.draw_receptive_field
_format_field = images._format_field  # private, but the property tests print fields with it

# speculative.py
speculative_sampler_test = speculative.speculative_sampler_test

# `from chainrule.reference.checks import *` gives the checks, not the submodules' names
# (`speculative` would shadow reference.speculative).
__all__ = [
    "check_param_shapes",
    "Tolerance", "TOLERANCES", "dtype_name", "tolerance", "Comparison", "compare", "assert_close",
    "as_float64",
    "JUDGE_FACTOR", "MIN_JUDGED", "MIN_JUDGED_COUNT", "TokenComparison", "compare_tokens", "assert_tokens",
    "dependency_matrix", "format_dependency_matrix", "allowed_dependencies", "assert_causal",
    "enumerate_sequences", "enumerate_log_probs", "assert_normalized",
    "PaddingComparison", "compare_padding", "assert_padding_invariant",
    "BatchInvariance", "batch_invariance", "assert_batch_invariant",
    "assert_pure",
    "naive_float32", "logits_through_cache",
    "FD_STEPS", "FD_ACCURACY", "FiniteDifference", "finite_difference_grad",
    "GoodnessOfFit", "sampler_goodness_of_fit",
    "image_dependencies", "receptive_field", "image_order_keys", "allowed_image_dependencies",
    "assert_image_causal", "draw_receptive_field",
    "speculative_sampler_test",
]  # fmt: skip

# `doctest.testmod` of a package collects only the examples of what its own file defines:
# __test__ hands it the re-exported functions and classes too, so that testing this module
# (tests/test_checks.py) runs every example of the checks, as when they were one file.
__test__ = {name: globals()[name] for name in __all__ if callable(globals()[name])}
