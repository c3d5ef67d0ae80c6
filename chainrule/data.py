"""Embedded data: corpora built from what is already installed, so nothing is downloaded.

Text comes from the installed Python standard library's own source files (code,
comments and docstrings): a few MB of real, varied English-and-code text that every
machine running chainrule has.

    stdlib_files(split)          the .py files of one split, in a fixed order
    stdlib_words(n_tokens, split) -> list of sentences (lists of str): one sentence per non-blank line
    stdlib_bytes(n_bytes, split)  -> (N,) int64 byte values in [0, 256)

The split is deterministic: a file belongs to "validation" when the CRC-32 of its
path relative to the standard library root is 0 mod 10, else to "train" (about a tenth
of the files validate). Contents depend on the installed Python version; the split and
the order do not depend on anything else (no randomness, no file-system order).
"""

from __future__ import annotations

import re
import sysconfig
import zlib
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
    root = stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in relative.parts[:-1]):
            continue
        if _split_of(relative.as_posix()) == split:
            files.append((relative.as_posix(), path))
    if not files:
        raise RuntimeError(f"no standard library sources found under {root}")
    return [path for _, path in sorted(files)]


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
