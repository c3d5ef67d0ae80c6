"""chainrule.data: the embedded corpora are deterministic, split without overlap, and honour their sizes."""

from __future__ import annotations

import numpy as np
import pytest

from chainrule import data


def test_splits_are_disjoint_and_cover_the_sources():
    train, validation = data.stdlib_files("train"), data.stdlib_files("validation")
    assert train and validation
    assert not set(train) & set(validation)
    assert len(validation) < len(train)
    assert all(p.suffix == ".py" for p in train + validation)
    assert not any("site-packages" in p.parts for p in train + validation)


def test_words_are_deterministic_and_sized():
    a = data.stdlib_words(5000)
    assert a == data.stdlib_words(5000)
    n = sum(map(len, a))
    assert 5000 <= n < 5000 + max(map(len, a))  # stops after the sentence that reaches the count
    assert all(s and all(isinstance(w, str) and w and not w.isspace() for w in s) for s in a)
    assert data.stdlib_words(5000, "validation") != a


def test_bytes():
    b = data.stdlib_bytes(12345)
    assert b.dtype == np.int64 and b.shape == (12345,)
    assert b.min() >= 0 and b.max() < 256
    first = data.stdlib_files("train")[0].read_bytes()
    assert bytes(b[: len(first)].astype(np.uint8)) == first[:12345]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_counts(bad):
    with pytest.raises(ValueError, match="n_tokens"):
        data.stdlib_words(bad)
    with pytest.raises(ValueError, match="n_bytes"):
        data.stdlib_bytes(bad)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.stdlib_files("test")
