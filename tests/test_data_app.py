"""chainrule.data's images and audio: layouts, ranges, determinism, disjoint splits, and the exact
properties of the generators (shape geometry, mu-law, chord intervals, feature localization)."""

from __future__ import annotations

import numpy as np
import pytest

from chainrule import data


def _as_set(x):
    return {example.tobytes() for example in np.ascontiguousarray(x)}


# ----------------------------------------------------------------------------- the table


def test_every_listed_array_dataset_loads_in_its_layout():
    listed = data.datasets()
    assert {"stdlib-bytes", "stdlib-words", "digits", "digits-binary", "shapes", "tones"} <= set(listed)
    ndim = {"text": 1, "image": 4, "audio": 2}
    for name in listed:
        if name == "stdlib-words":
            continue
        for split in data.SPLITS:
            d = data.load(name, split, 5000 if name == "stdlib-bytes" else 7)
            assert d.name == name and d.split == split
            assert d.x.dtype == np.int64 and d.x.ndim == ndim[d.kind], (name, d.x.shape)
            assert d.x.min() >= 0 and d.x.max() < d.levels
            assert d.x.shape[0] == (5000 if name == "stdlib-bytes" else 7)
            if d.kind == "image":
                assert d.dims == int(np.prod(d.x.shape[1:]))
                if name.startswith("digits"):
                    assert d.cond.shape == (7,) and set(d.cond) <= set(range(10))  # class labels
                else:
                    assert d.cond is None
            if d.kind == "audio":
                assert d.cond.shape == (7, 16, -(-d.x.shape[1] // d.hop)) and d.cond.dtype == np.float64


def test_load_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"name: expected a dataset from .*'digits'.*got 'mnist'"):
        data.load("mnist")
    with pytest.raises(ValueError, match="stdlib_words"):
        data.load("stdlib-words")
    with pytest.raises(ValueError, match="split"):
        data.load("digits", "test")
    with pytest.raises(ValueError, match="n: expected a positive int"):
        data.load("digits", "train", 0)


# ----------------------------------------------------------------------------- digits


def test_digits_are_sklearns_images_split_by_content():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, validation = data.digits("train"), data.digits("validation")
    assert train.shape[1:] == validation.shape[1:] == (1, 8, 8)
    assert len(train) + len(validation) == len(bunch.images) == 1797
    assert 100 < len(validation) < 300  # about one in ten
    assert not _as_set(train) & _as_set(validation)  # disjoint as sets of images
    everything = _as_set(bunch.images.astype(np.int64)[:, None])
    assert _as_set(train) | _as_set(validation) == everything
    assert train.min() == 0 and train.max() == 16
    labels = data.digit_labels("train")
    assert labels.shape == (len(train),) and set(labels) == set(range(10))
    keep = np.array([data._content_split(im[None]) == "train" for im in bunch.images.astype(np.int64)])
    assert np.array_equal(labels, bunch.target[keep]) and np.array_equal(train[:, 0], bunch.images[keep])
    # the order within a split is the bundled order: the first training image is the first bundled
    # image whose content falls in "train"
    first = next(im for im in bunch.images.astype(np.int64) if data._content_split(im[None]) == "train")
    assert np.array_equal(train[0, 0], first)
    assert np.array_equal(data.digits("train", 5), train[:5])


def test_binary_digits_threshold_the_grey_levels():
    grey, binary = data.digits("validation"), data.digits("validation", binary=True)
    assert np.array_equal(binary, (grey >= 8).astype(np.int64))
    assert set(np.unique(binary)) == {0, 1}


# ----------------------------------------------------------------------------- shapes


def test_shape_masks_are_exact():
    square = data.shape_mask("square", 16, (8.0, 8.0), 2.5)
    assert square.sum() == 36 and square[5:11, 5:11].all()  # pixel centres 5.5..10.5 lie within 2.5 of 8
    disc = data.shape_mask("disc", 16, (8.0, 8.0), 3.0)
    assert np.array_equal(disc, disc[::-1, ::-1]) and np.array_equal(disc, disc.T)  # symmetric about (8, 8)
    assert not disc[5, 5] and disc[6, 6]  # (2.5^2 * 2 = 12.5 > 9; 1.5^2 * 2 = 4.5 <= 9)
    tri = data.shape_mask("triangle", 16, (8.0, 8.0), 4.0)
    widths = tri.sum(axis=1)
    rows = np.nonzero(widths)[0]
    assert np.all(np.diff(widths[rows]) >= 0)  # apex up: rows widen downwards
    cross = data.shape_mask("cross", 16, (8.0, 8.0), 3.0)
    assert cross[7, 5] and cross[5, 7] and not cross[5, 5]
    with pytest.raises(ValueError, match="kind: expected one of"):
        data.shape_mask("star", 16, (8.0, 8.0), 3.0)


def test_shapes_are_deterministic_disjoint_and_in_range():
    a = data.shapes("train", 13)
    assert a.shape == (13, 3, 16, 16) and a.dtype == np.int64 and a.min() >= 0 and a.max() < 4
    assert np.array_equal(a, data.shapes("train", 13))
    v = data.shapes("validation", 7)
    assert not _as_set(a) & _as_set(v)
    assert len(_as_set(a)) == 13  # distinct images
    assert all(data._content_split(x) == "validation" for x in v)
    # every image shows a shape on a background: at least two colours
    assert all(len({tuple(c) for c in x.reshape(3, -1).T}) >= 2 for x in a)
    small = data.shapes("train", 3, size=8, levels=2)
    assert small.shape == (3, 3, 8, 8) and small.max() <= 1
    assert not np.array_equal(data.shapes("train", 3, seed=1), data.shapes("train", 3))
    with pytest.raises(ValueError, match="levels"):
        data.shapes("train", 3, levels=1)


# ----------------------------------------------------------------------------- audio


def test_mu_law_round_trip_is_exact_on_codes():
    q = np.arange(256)
    assert np.array_equal(data.mu_law_encode(data.mu_law_decode(q)), q)  # every code decodes and re-encodes
    assert data.mu_law_encode(np.array([-1.0, 1.0])).tolist() == [0, 255]
    x = np.linspace(-1, 1, 2001)
    codes = data.mu_law_encode(x)
    assert np.all(np.diff(codes) >= 0)  # monotone
    # the quantization error is at most half a code's width in the companded domain
    f = np.sign(x) * np.log1p(255 * np.abs(x)) / np.log1p(255)
    assert np.max(np.abs((codes / 255 * 2 - 1) - f)) <= 1 / 255 + 1e-12
    with pytest.raises(ValueError, match="signal"):
        data.mu_law_encode(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="q: expected integers in"):
        data.mu_law_decode(np.array([0, 256]))


def test_chord_has_a_major_or_minor_triad():
    x = data.tone(0, length=16000)  # index 0 is a chord; one second: 1 Hz resolution
    assert data.TONE_KINDS[0] == "chord"
    spectrum = np.abs(np.fft.rfft(x))
    peaks = [k for k in range(1, len(spectrum) - 1) if spectrum[k] >= spectrum[k - 1] and spectrum[k] > spectrum[k + 1]]
    top = sorted(sorted(peaks, key=lambda k: -spectrum[k])[:3])
    ratios = np.array(top[1:]) / top[0]
    third = 2 ** (4 / 12) if abs(ratios[0] - 2 ** (4 / 12)) < abs(ratios[0] - 2 ** (3 / 12)) else 2 ** (3 / 12)
    assert abs(ratios[0] - third) < 0.02 and abs(ratios[1] - 2 ** (7 / 12)) < 0.02, top
    assert 0.3 - 1e-12 <= np.max(np.abs(x)) <= 0.9 + 1e-12


def test_chirp_frequency_rises_or_falls_monotonically():
    x = data.tone(1, length=16000)  # index 1 is a chirp
    zero_crossings = np.nonzero(np.diff(np.sign(x)) != 0)[0]
    halves = [np.sum((zero_crossings >= a) & (zero_crossings < a + 4000)) for a in (2000, 6000, 10000)]
    assert halves[0] != halves[2] and (np.all(np.diff(halves) > 0) or np.all(np.diff(halves) < 0)), halves


def test_tones_are_deterministic_disjoint_mu_law_codes():
    a = data.tones("train", 5, length=257)
    assert a.shape == (5, 257) and a.dtype == np.int64 and 0 <= a.min() and a.max() < 256
    assert np.array_equal(a, data.tones("train", 5, length=257))
    v = data.tones("validation", 3, length=257)
    assert not _as_set(a) & _as_set(v)


def test_frame_features_localize_a_tone_in_time_and_frequency():
    t = np.arange(4096) / data.SAMPLE_RATE
    x = np.zeros(4096)
    x[2048:] = 0.5 * np.sin(2 * np.pi * 1000 * t[2048:])  # silence, then 1 kHz
    h = data.frame_features(x[None], hop=256, n_bands=16)
    assert h.shape == (1, 16, 16)
    edges = np.geomspace(50, 8000, 17)
    band = int(np.searchsorted(edges, 1000, side="right") - 1)
    assert np.all(h[0, :, :7] < -10)  # frames 0..6 (samples < 2048) are silent: log(1e-6)
    assert np.all(np.argmax(h[0, :, 9:], axis=0) == band)  # the tone's band dominates later frames
    codes = data.mu_law_encode(x)[None]
    assert data.frame_features(codes).shape == (1, 16, 16)  # integer codes are decoded first
    with pytest.raises(ValueError, match="audio: expected shape"):
        data.frame_features(x)


def test_upsample_features_repeats_each_frame_hop_times():
    h = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    up = data.upsample_features(h, 5, 17)
    assert up.shape == (2, 3, 17)
    for k in range(17):
        assert np.array_equal(up[:, :, k], h[:, :, k // 5])
    with pytest.raises(ValueError, match="length"):
        data.upsample_features(h, 5, 21)


# ----------------------------------------------------------------------------- windows


def test_windows_and_random_windows():
    s = np.arange(103)
    w = data.windows(s, 10)
    assert w.shape == (10, 10) and np.array_equal(w.ravel(), s[:100])
    assert data.windows(s, 10, 3).shape == (3, 10)
    r = data.random_windows(s, 7, 13, np.random.default_rng(5))
    assert r.shape == (13, 7) and np.all(np.diff(r, axis=1) == 1) and r.max() <= 102
    assert np.array_equal(r, data.random_windows(s, 7, 13, np.random.default_rng(5)))
    with pytest.raises(ValueError, match="stream: expected at least"):
        data.windows(s, 200)
    with pytest.raises(TypeError, match="rng"):
        data.random_windows(s, 7, 3, 5)
