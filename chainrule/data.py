"""Embedded data: corpora built from what is already installed, so nothing is downloaded.

Text comes from the installed Python standard library's own source files (code,
comments and docstrings): a few MB of real, varied English-and-code text that every
machine running chainrule has.

    stdlib_files(split)          the .py files of one split, in a fixed order
    stdlib_words(n_tokens, split) -> list of sentences (lists of str): one sentence per non-blank line
    stdlib_bytes(n_bytes, split)  -> (N,) int64 byte values in [0, 256)

Images and audio are scikit-learn's bundled digits and sets generated from a fixed seed:

    digits(split, n, binary)      -> (N, 1, 8, 8) int64, 17 levels (binary: 2); digit_labels -> (N,)
    shapes(split, n, size, levels) -> (N, 3, size, size) int64: coloured squares, discs, triangles, crosses
    tones(split, n, length)       -> (N, T) int64 mu-law codes of 16 kHz chords, chirps, AM and FM tones
    frame_features(audio, hop)    -> (N, F, frames) log band energies, for local conditioning
    windows / random_windows      a token stream cut into (B, T) model inputs

`datasets()` lists every dataset by name and `load(name, split, n)` returns one split of it
as a `Dataset` of integer arrays in the layouts of docs/design.md.

The text split is deterministic: a file belongs to "validation" when the CRC-32 of its
path relative to the standard library root is 0 mod 10, else to "train" (about a tenth
of the files validate). Contents depend on the installed Python version; the split and
the order do not depend on anything else (no randomness, no file-system order).
"""

from __future__ import annotations

import functools
import os
import re
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation")
VALIDATION_MODULUS = 10  # one file in ten (by path checksum) is held out

# Directories of the standard library that are not its own prose and code: tests (large, repetitive
# data), third-party installs, and generated or vendored material.
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3", "ensurepip", "turtledemo",
     "__pycache__", "config-3.11-x86_64-linux-gnu"}
)  # fmt: skip

# A word: an identifier-like run of letters/underscores, a run of digits, or one punctuation character.
WORD = re.compile(r"[A-Za-z_]+|[0-9]+|[^\sA-Za-z_0-9]")


def stdlib_root() -> Path:
    """The installed standard library's directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def _split_of(relative: str) -> str:
    return "validation" if zlib.crc32(relative.encode()) % VALIDATION_MODULUS == 0 else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")


def stdlib_files(split: str = "train") -> list[Path]:
    """The standard library's .py files of `split`, sorted by relative path."""
    _check_split(split)
    return [path for relative, path in _stdlib_sources() if _split_of(relative) == split]


@functools.cache
def _stdlib_sources() -> tuple[tuple[str, Path], ...]:
    """(relative posix path, path) of every .py file under the standard library root outside
    EXCLUDED_DIRS, sorted by relative path; the tree is walked once per process, and the excluded
    directories (site-packages above all) are never entered."""
    root = stdlib_root()
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in EXCLUDED_DIRS]
        base = Path(folder)
        for name in names:
            if name.endswith(".py"):
                path = base / name
                files.append((path.relative_to(root).as_posix(), path))
    if not files:
        raise RuntimeError(f"no standard library sources found under {root}")
    return tuple(sorted(files))


def _check_count(name: str, n) -> None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"{name}: expected a positive int or None, got {n!r}")


def stdlib_words(n_tokens: int | None = None, split: str = "train") -> list[list[str]]:
    """Sentences of word tokens: each non-blank source line, split by `WORD`.

    Stops after the sentence that reaches `n_tokens` tokens in total (None: everything).
    """
    _check_count("n_tokens", n_tokens)
    sentences, total = [], 0
    for path in stdlib_files(split):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = WORD.findall(line)
            if not words:
                continue
            sentences.append(words)
            total += len(words)
            if n_tokens is not None and total >= n_tokens:
                return sentences
    return sentences


def stdlib_bytes(n_bytes: int | None = None, split: str = "train") -> np.ndarray:
    """The files of `split` concatenated as bytes -> (N,) int64 in [0, 256), at most `n_bytes` long."""
    _check_count("n_bytes", n_bytes)
    chunks, total = [], 0
    for path in stdlib_files(split):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if n_bytes is not None and total >= n_bytes:
            break
    out = np.frombuffer(b"".join(chunks), dtype=np.uint8).astype(np.int64)
    return out if n_bytes is None else out[:n_bytes]


# ============================================================================= the dataset table
#
# Every dataset below is built from what is installed or generated from a fixed seed, and split
# deterministically by a CRC-32 checksum: of a file's path (text) or of an example's own content
# (images, audio), 0 mod 10 -> "validation". Splitting by content makes the splits disjoint as sets
# of examples: two identical examples always land in the same split.
#
#     name              kind    array                          levels
#     stdlib-bytes      text    (N,) int64 byte stream          256
#     stdlib-words      text    sentences (lists of str)        -
#     digits            image   (N, 1, 8, 8) int64              17
#     digits-binary     image   (N, 1, 8, 8) int64              2
#     shapes            image   (N, 3, 16, 16) int64            4 per channel
#     tones             audio   (N, T) int64, mu-law            256   (+ frame features (N, F, frames))
#
# `datasets()` lists them; `load(name, split, n)` returns a `Dataset`.


def _content_split(example: np.ndarray) -> str:
    """The split of one example: CRC-32 of its values as little-endian int64 bytes, 0 mod 10 -> validation."""
    raw = np.ascontiguousarray(example, dtype="<i8").tobytes()
    return "validation" if zlib.crc32(raw) % VALIDATION_MODULUS == 0 else "train"


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- images: digits

DIGIT_LEVELS = 17  # scikit-learn's digits: 8x8 counts of set pixels in 4x4 blocks of 32x32 bitmaps, 0..16


def digits(split: str = "train", n: int | None = None, *, binary: bool = False) -> np.ndarray:
    """scikit-learn's bundled handwritten digits (UCI "Optical Recognition of Handwritten Digits",
    1797 images) -> (N, 1, 8, 8) int64 in [0, 17), or in [0, 2) with `binary` (x >= 8: set).

    The split is by content (module comment above); within a split the images keep the
    bundled order. `n`: at most the first n (None: all of the split).
    """
    return _digits(split, n, binary)[0]


def digit_labels(split: str = "train", n: int | None = None) -> np.ndarray:
    """The class (0..9) of every image `digits(split, n)` returns -> (N,) int64."""
    return _digits(split, n, False)[1]


def _digits_file() -> Path | None:
    """scikit-learn's bundled digits.csv.gz (64 pixels then the label per row), found without importing
    scikit-learn (a slow import), or None."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@functools.cache
def _bundled_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (1797, 1, 8, 8) int64, labels (1797,) int64, split names (1797,)), read-only, read once:
    what sklearn.datasets.load_digits returns (its own file, read directly when it is where
    scikit-learn keeps it)."""
    path = _digits_file()
    if path is not None:
        rows = np.loadtxt(path, delimiter=",", dtype=np.int64)  # (1797, 65)
        images, labels = rows[:, :64].reshape(-1, 1, 8, 8), rows[:, 64]
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = bunch.images.astype(np.int64)[:, None], bunch.target.astype(np.int64)
    splits = np.array([_content_split(im) for im in images])
    out = (np.ascontiguousarray(images), labels, splits)
    for a in out:
        a.setflags(write=False)
    return out


def _digits(split, n, binary):
    _check_split(split)
    _check_count("n", n)
    images, labels, splits = _bundled_digits()
    keep = splits == split
    images, labels = images[keep][:n], labels[keep][:n]  # boolean indexing: new, writable arrays
    return (images >= DIGIT_LEVELS // 2).astype(np.int64) if binary else images, labels


# ----------------------------------------------------------------------------- images: coloured shapes

SHAPES = ("square", "disc", "triangle", "cross")
SHAPES_SEED = 20160125  # the seed of the synthetic sets: example i is drawn from default_rng([seed, i])


def shape_mask(kind: str, size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """A filled shape on a size x size grid -> (size, size) bool. Pixel (i, j) has centre (i + 0.5, j + 0.5):

        square    max(|di|, |dj|) <= r          disc      di^2 + dj^2 <= r^2
        triangle  0 <= di + r <= 2r, |dj| <= (di + r) / 2   (apex up)
        cross     min(|di|, |dj|) <= r / 3 and max(|di|, |dj|) <= r
    """
    if kind not in SHAPES:
        raise ValueError(f"kind: expected one of {SHAPES}, got {kind!r}")
    i, j = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    di, dj = i - centre[0], j - centre[1]
    if kind == "square":
        return np.maximum(abs(di), abs(dj)) <= radius
    if kind == "disc":
        return di**2 + dj**2 <= radius**2
    if kind == "triangle":
        return (di >= -radius) & (di <= radius) & (abs(dj) <= (di + radius) / 2)
    return (np.minimum(abs(di), abs(dj)) <= radius / 3) & (np.maximum(abs(di), abs(dj)) <= radius)


def shape_image(index: int, size: int = 16, levels: int = 4, seed: int = SHAPES_SEED) -> np.ndarray:
    """Example `index` of the coloured-shapes set -> (3, size, size) int64 in [0, levels).

    A dark background colour (every channel < levels / 2), then 1 to 3 shapes (`SHAPES`), each a
    random colour other than the background's, radius in [size/8, size/4], centre inside the
    image, drawn in order (later shapes cover earlier ones). Drawn from default_rng([seed, index]).
    """
    rng = np.random.default_rng([seed, index])
    background = rng.integers(0, max(levels // 2, 1), 3)
    image = np.broadcast_to(background[:, None, None], (3, size, size)).copy()
    for _ in range(rng.integers(1, 4)):
        kind = SHAPES[rng.integers(len(SHAPES))]
        colour = background
        while np.array_equal(colour, background):
            colour = rng.integers(0, levels, 3)
        radius = rng.uniform(size / 8, size / 4)
        centre = rng.uniform(radius / 2, size - radius / 2, 2)
        image[:, shape_mask(kind, size, tuple(centre), radius)] = colour[:, None]
    return image


def shapes(split: str = "train", n: int = 256, *, size: int = 16, levels: int = 4,
           seed: int = SHAPES_SEED) -> np.ndarray:  # fmt: skip
    """The first n coloured-shapes images of `split` (`shape_image` i = 0, 1, 2, ... split by
    content) -> (n, 3, size, size) int64 in [0, levels)."""
    _check_split(split)
    n = _check_int("n", n, 1)
    size, levels = _check_int("size", size, 4), _check_int("levels", levels, 2)
    return _first_of_split(lambda i: shape_image(i, size, levels, seed), split, n)


def _first_of_split(make, split: str, n: int) -> np.ndarray:
    out, i = [], 0
    while len(out) < n:
        example = make(i)
        if _content_split(example) == split:
            out.append(example)
        i += 1
    return np.stack(out)


# ----------------------------------------------------------------------------- audio

SAMPLE_RATE = 16_000
MU = 255  # 8-bit mu-law: 256 levels
TONE_KINDS = ("chord", "chirp", "am", "fm")
TONES_SEED = 20160912


def mu_law_encode(signal, mu: int = MU) -> np.ndarray:
    """mu-law companding and quantization (ITU-T G.711; WaveNet, van den Oord et al. 2016, sec. 2.2):

        f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu),   q = round((f(x) + 1) / 2 * mu)

    signal: float array in [-1, 1] -> int64 array of the same shape in [0, mu + 1).
    """
    x = np.asarray(signal, dtype=np.float64)
    if not np.all(np.isfinite(x)) or (x.size and np.max(np.abs(x)) > 1):
        raise ValueError("signal: expected finite values in [-1, 1], got "
                         f"{x[~np.isfinite(x)][:1] if not np.all(np.isfinite(x)) else np.max(np.abs(x))}")  # fmt: skip
    f = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.rint((f + 1) / 2 * mu).astype(np.int64)


def mu_law_decode(q, mu: int = MU) -> np.ndarray:
    """The inverse of `mu_law_encode` (up to the quantization): q in [0, mu] ->

        f = 2 q / mu - 1,   x = sign(f) ((1 + mu)^|f| - 1) / mu      float64 in [-1, 1].
    """
    q = np.asarray(q)
    if q.dtype.kind not in "iu" or (q.size and (q.min() < 0 or q.max() > mu)):
        raise ValueError(f"q: expected integers in [0, {mu}], got dtype {q.dtype}"
                         + (f", range [{q.min()}, {q.max()}]" if q.size and q.dtype.kind in "iu" else ""))  # fmt: skip
    f = 2 * q.astype(np.float64) / mu - 1
    return np.sign(f) * np.expm1(np.abs(f) * np.log1p(mu)) / mu


def tone(index: int, length: int = 4096, seed: int = TONES_SEED, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Example `index` of the synthetic audio set -> (length,) float64 in [-1, 1]. Its kind is
    TONE_KINDS[index % 4]; the parameters come from default_rng([seed, index]):

        chord  sum of 3 sines, a root f0 in [110, 440] Hz with a major or minor third and fifth
               (frequency ratios 2^(4/12) or 2^(3/12), and 2^(7/12)), each with a random phase
        chirp  sin(2 pi (f0 t + (f1 - f0) t^2 / (2 D))): f0 -> f1 linearly over the duration D
        am     (1 + m sin(2 pi fm t)) sin(2 pi fc t) / (1 + m), modulation depth m, rate fm in [2, 12] Hz
        fm     sin(2 pi fc t + beta sin(2 pi fm t)), index beta in [0.5, 5], fm in [20, 200] Hz

    then a 10 ms linear fade-in and fade-out, scaled to a peak amplitude in [0.3, 0.9].
    """
    rng = np.random.default_rng([seed, index])
    t = np.arange(length) / sample_rate
    kind = TONE_KINDS[index % len(TONE_KINDS)]
    if kind == "chord":
        f0 = rng.uniform(110, 440)
        third = 2 ** ((4 if rng.random() < 0.5 else 3) / 12)
        x = sum(np.sin(2 * np.pi * f0 * r * t + rng.uniform(0, 2 * np.pi)) for r in (1, third, 2 ** (7 / 12)))
    elif kind == "chirp":
        f0, f1 = rng.uniform(100, 2000, 2)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(t[-1], 1 / sample_rate))))
    elif kind == "am":
        fc, fm, m = rng.uniform(200, 1500), rng.uniform(2, 12), rng.uniform(0.3, 1)
        x = (1 + m * np.sin(2 * np.pi * fm * t)) * np.sin(2 * np.pi * fc * t) / (1 + m)
    else:
        fc, fm, beta = rng.uniform(200, 1500), rng.uniform(20, 200), rng.uniform(0.5, 5)
        x = np.sin(2 * np.pi * fc * t + beta * np.sin(2 * np.pi * fm * t))
    ramp = np.minimum(1.0, np.minimum(np.arange(length) + 1, length - np.arange(length)) / (0.01 * sample_rate))
    x = x * ramp
    peak = np.max(np.abs(x))
    return x / peak * rng.uniform(0.3, 0.9) if peak > 0 else x


def tones(split: str = "train", n: int = 64, *, length: int = 4096, seed: int = TONES_SEED) -> np.ndarray:
    """The first n synthetic 16 kHz signals of `split` (`tone` i = 0, 1, 2, ..., mu-law quantized,
    split by content) -> (n, length) int64 in [0, 256)."""
    _check_split(split)
    n, length = _check_int("n", n, 1), _check_int("length", length, 1)
    return _first_of_split(lambda i: mu_law_encode(tone(i, length, seed)), split, n)


def frame_features(audio, *, hop: int = 256, n_bands: int = 16, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Frame-level features for local conditioning (WaveNet sec. 2.5: a time series h, at a lower
    rate than the audio): log band energies of Hann-windowed frames.

    audio: (B, T) int mu-law codes (decoded first) or float in [-1, 1]. Frame k covers samples
    [k hop, k hop + 2 hop) (zero-padded at the end); its spectrum |FFT|^2 is summed over
    `n_bands` bands with log-spaced edges from 50 Hz to sample_rate / 2:

        h[b, f, k] = log(1e-6 + sum_{bins in band f} |X_k(bin)|^2)

    -> (B, n_bands, ceil(T / hop)) float64. `upsample_features` repeats it to the sample rate.
    """
    a = np.asarray(audio)
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"audio: expected shape (B, T) with T >= 1, got {a.shape}")
    hop, n_bands = _check_int("hop", hop, 1), _check_int("n_bands", n_bands, 1)
    x = mu_law_decode(a) if a.dtype.kind in "iu" else a.astype(np.float64)
    B, T = x.shape
    frames = -(-T // hop)
    padded = np.zeros((B, frames * hop + hop))
    padded[:, :T] = x
    idx = np.arange(frames)[:, None] * hop + np.arange(2 * hop)  # (frames, 2 hop)
    power = np.abs(np.fft.rfft(padded[:, idx] * np.hanning(2 * hop), axis=-1)) ** 2  # (B, frames, hop + 1)
    freqs = np.fft.rfftfreq(2 * hop, 1 / sample_rate)
    edges = np.geomspace(50, sample_rate / 2, n_bands + 1)
    band = np.clip(np.searchsorted(edges, freqs, side="right") - 1, 0, n_bands - 1)  # (hop + 1,)
    energy = np.zeros((B, frames, n_bands))
    for f in range(n_bands):
        energy[:, :, f] = power[:, :, band == f].sum(axis=-1)
    return np.log(1e-6 + energy).transpose(0, 2, 1)


def upsample_features(features, hop: int, length: int) -> np.ndarray:
    """(B, F, frames) -> (B, F, length): frame k's features repeated for samples [k hop, (k+1) hop)."""
    h = np.asarray(features)
    if h.ndim != 3:
        raise ValueError(f"features: expected shape (B, F, frames), got {h.shape}")
    hop, length = _check_int("hop", hop, 1), _check_int("length", length, 1)
    if h.shape[2] * hop < length:
        raise ValueError(f"length: expected at most frames * hop = {h.shape[2] * hop}, got {length}")
    return np.repeat(h, hop, axis=2)[:, :, :length]


# ----------------------------------------------------------------------------- text as model inputs


def windows(stream, length: int, n: int | None = None) -> np.ndarray:
    """Consecutive non-overlapping windows of a (N,) token stream -> (min(n, N // length), length).

    The deterministic evaluation set of a sequence model: window k is stream[k L : (k+1) L].
    """
    s = np.asarray(stream)
    if s.ndim != 1:
        raise ValueError(f"stream: expected shape (N,), got {s.shape}")
    length = _check_int("length", length, 1)
    _check_count("n", n)
    count = len(s) // length if n is None else min(n, len(s) // length)
    if count < 1:
        raise ValueError(f"stream: expected at least length={length} tokens, got {len(s)}")
    return s[: count * length].reshape(count, length).copy()


def random_windows(stream, length: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """`batch` windows of `length` tokens at uniform random offsets of a (N,) stream -> (batch, length)."""
    s = np.asarray(stream)
    length, batch = _check_int("length", length, 1), _check_int("batch", batch, 1)
    if s.ndim != 1 or len(s) < length:
        raise ValueError(f"stream: expected shape (N,) with N >= length={length}, got {s.shape}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    starts = rng.integers(0, len(s) - length + 1, batch)
    return s[starts[:, None] + np.arange(length)]


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Dataset:
    """One split of a dataset. x: integer array in the layout of docs/design.md (text: a (N,) stream;
    images: (N, C, H, W); audio: (N, T)); levels: values per entry (x in [0, levels));
    cond: conditioning (digits: class labels (N,); tones: frame features (N, F, frames)) or None."""

    name: str
    kind: str  # "text" | "image" | "audio"
    split: str
    x: np.ndarray
    levels: int
    cond: np.ndarray | None = None
    hop: int | None = None  # audio: samples per feature frame

    @property
    def dims(self) -> int:
        """Entries per example (the denominator of bits/dim): 1 per token for a text stream."""
        return 1 if self.kind == "text" else int(np.prod(self.x.shape[1:]))


_TABLE = {
    "stdlib-bytes": ("text", 256, "the standard library's sources as bytes: a (N,) stream, vocabulary 256"),
    "stdlib-words": ("text", None, "the standard library's sources as word sentences (n-gram models)"),
    "digits": ("image", DIGIT_LEVELS, "scikit-learn's 8x8 handwritten digits: (N, 1, 8, 8), 17 levels; cond: labels"),
    "digits-binary": ("image", 2, "the digits binarized at 8: (N, 1, 8, 8), 2 levels; cond: labels"),
    "shapes": ("image", 4, "synthetic coloured shapes: (N, 3, 16, 16), 4 levels per channel"),
    "tones": ("audio", 256, "synthetic 16 kHz chords, chirps, AM/FM tones, mu-law: (N, 4096), 256 levels; "
                            "cond: frame features (N, 16, 16)"),
}  # fmt: skip


def datasets() -> dict[str, str]:
    """name -> one-line description of every dataset `load` knows."""
    return {name: description for name, (_, _, description) in _TABLE.items()}


def classes(name: str) -> int:
    """The number of classes of a labelled dataset (its `cond` holds labels (N,) in [0, classes)), else 0."""
    info(name)
    return 10 if name in ("digits", "digits-binary") else 0


def info(name: str) -> tuple[str, int | None]:
    """(kind, levels) of dataset `name` without loading it: kind "text", "image" or "audio"; levels
    the values per entry (None for stdlib-words)."""
    if name not in _TABLE:
        raise ValueError(f"name: expected a dataset from {sorted(_TABLE)}, got {name!r}")
    kind, levels, _ = _TABLE[name]
    return kind, levels


def load(name: str, split: str = "train", n: int | None = None) -> Dataset:
    """One split of dataset `name` (see `datasets()`): at most n examples (text: n bytes; None:
    everything; the generated sets: 4096 shapes / 256 tones for "train", a
    quarter of that for "validation"). stdlib-words is not an
    array: use `stdlib_words`."""
    kind, levels = info(name)
    _check_split(split)
    _check_count("n", n)
    if name == "stdlib-bytes":
        return Dataset(name, kind, split, stdlib_bytes(n, split), levels)
    if name == "stdlib-words":
        raise ValueError("name: 'stdlib-words' is a list of sentences, not an array: use stdlib_words()")
    if name in ("digits", "digits-binary"):
        images, labels = _digits(split, n, name == "digits-binary")
        return Dataset(name, kind, split, images, levels, labels)
    if name == "shapes":
        return Dataset(name, kind, split, shapes(split, n or (4096 if split == "train" else 1024)), levels)
    audio = tones(split, n or (256 if split == "train" else 64))
    return Dataset(name, kind, split, audio, levels, frame_features(audio), hop=256)
