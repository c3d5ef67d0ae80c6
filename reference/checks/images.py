"""Images: causality in raster and channel order, receptive fields, and their pictures.

An image model factorizes p(x) over the entries x[c, i, j] in raster order and, within a
pixel, over channel groups in turn. `image_dependencies` and `receptive_field` measure which
input entries each output depends on, bit for bit; `assert_image_causal` asserts the order
(and, with full=True, that nothing allowed is ignored); `draw_receptive_field` draws fields
into a PNG (matplotlib, imported when it draws).
"""

from __future__ import annotations

import itertools

import numpy as np

from chainrule.reference.checks.arrays import _isnan, _module, _restore, _to_numpy


# ----------------------------------------------------------------------------- images: receptive fields and causality
#
# An image model factorizes p(x) over the entries x[c, i, j] in raster order (rows, then
# pixels) and, within a pixel, over channel groups in turn. Its outputs have the layout
# (B, Co, H, W, ...): the output at (o, i, j) belongs to pixel (i, j) and to channel group
# (o * G) // Co, the input entry (c, i, j) to group (c * G) // C, G = channel_groups
# (3 for R, G, B predicted in turn; 1 when a pixel's channels are predicted jointly from the
# pixels before it, as PixelCNN++'s mixture parameters are).


def _image_input(x, levels):
    xn = _to_numpy(x)
    if xn.ndim != 4 or not np.issubdtype(xn.dtype, np.integer):
        raise ValueError(f"x: expected a (B, C, H, W) integer image array, got {xn.dtype} {xn.shape}")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"levels: expected an int >= 2, got {levels!r}")
    if xn.size and (xn.min() < 0 or xn.max() >= levels):
        raise ValueError(f"x: expected values in [0, {levels}), got {xn.min()}..{xn.max()}")
    return xn


def _image_output(out, shape_hw) -> np.ndarray:
    o = _to_numpy(out)
    if o.ndim < 4 or o.shape[2:4] != shape_hw:
        raise ValueError(f"fn: expected outputs (B, Co, H, W, ...) with (H, W) = {shape_hw}, got {o.shape}")
    return o


def _changed_entries(base: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(Co, H, W) bool: which outputs differ bit for bit (NaN equals NaN), over batch and trailing axes."""
    if base.shape != out.shape:
        raise ValueError(f"fn: expected the same output shape for every input, got {base.shape} and {out.shape}")
    diff = (base != out) & ~(_isnan(base) & _isnan(out))
    return diff.reshape(diff.shape[:4] + (-1,)).any(axis=(0, 4))


def _perturb_entries(x: np.ndarray, where: np.ndarray, rng, levels) -> np.ndarray:
    """A copy of x (B, C, H, W) with every entry where `where` (C, H, W) is True moved to a different level."""
    y = x.copy()
    shift = rng.integers(1, levels, size=x.shape)
    y[:, where] = (x[:, where] + shift[:, where]) % levels
    return y


def image_dependencies(fn, x, *, levels: int, n_trials: int = 2, seed: int = 0) -> np.ndarray:
    """The full dependency structure of an image function, measured bit for bit.

    fn: x (B, C, H, W) int -> outputs (B, Co, H, W, ...) (NumPy, CuPy or torch in and out).
    Returns D, (Co, H, W, C, H, W) bool: D[o, i, j, c, k, l] is True when changing the input
    entry x[:, c, k, l] (in every batch row, to a different level, `n_trials` random times)
    changed any output at (o, i, j) by even one bit. C H W n_trials + 1 calls of fn.
    """
    xn = _image_input(x, levels)
    rng = np.random.default_rng(seed)
    base = _image_output(fn(x), xn.shape[2:])
    C, H, W = xn.shape[1:]
    D = np.zeros(base.shape[1:4] + (C, H, W), dtype=bool)
    for c, k, l in itertools.product(range(C), range(H), range(W)):
        where = np.zeros((C, H, W), dtype=bool)
        where[c, k, l] = True
        for _ in range(n_trials):
            out = _image_output(fn(_restore(_perturb_entries(xn, where, rng, levels), x)), xn.shape[2:])
            D[..., c, k, l] |= _changed_entries(base, out)
    return D


def receptive_field(fn, x, position, *, levels: int, n_trials: int = 2, seed: int = 0) -> np.ndarray:
    """(C, H, W) bool: the input entries the output at `position` = (o, i, j) depends on, bit for bit.

    fn, x, levels, n_trials: as `image_dependencies` (C H W n_trials + 1 calls of fn); the
    output at (o, i, j) is out[:, o, i, j, ...]. For a PixelCNN's logits (B, C, H, W, levels),
    position (c, i, j) is the distribution of x[c, i, j]: its receptive field must lie in the
    pixels before (i, j) and the channels < c of (i, j); `pixels.any(axis=0)` gives the pixels.

        rf = receptive_field(lambda img: my_pixelcnn(img), x, (0, 4, 4), levels=256)
    """
    xn = _image_input(x, levels)
    o, i, j = position
    rng = np.random.default_rng(seed)
    base = _image_output(fn(x), xn.shape[2:])
    if not (0 <= o < base.shape[1] and 0 <= i < base.shape[2] and 0 <= j < base.shape[3]):
        raise ValueError(f"position: expected (o, i, j) inside the output's {base.shape[1:4]}, got {tuple(position)}")
    C, H, W = xn.shape[1:]
    field = np.zeros((C, H, W), dtype=bool)
    for c, k, l in itertools.product(range(C), range(H), range(W)):
        where = np.zeros((C, H, W), dtype=bool)
        where[c, k, l] = True
        for _ in range(n_trials):
            out = _image_output(fn(_restore(_perturb_entries(xn, where, rng, levels), x)), xn.shape[2:])
            field[c, k, l] |= bool(_changed_entries(base, out)[o, i, j])
    return field


def image_order_keys(n_channels: int, height: int, width: int, channel_groups: int) -> np.ndarray:
    """(n_channels, H, W) int: each entry's place in the chain-rule order, (i W + j) G + group(c),
    group(c) = (c G) // n_channels. Entries with equal keys are predicted jointly."""
    G = channel_groups
    if isinstance(G, bool) or not isinstance(G, (int, np.integer)) or not 1 <= G <= n_channels:
        raise ValueError(f"channel_groups: expected an int in [1, {n_channels}] (the channel count), got {G!r}")
    group = (np.arange(n_channels) * G) // n_channels
    pixel = np.arange(height)[:, None] * width + np.arange(width)[None, :]
    return pixel[None, :, :] * G + group[:, None, None]


def allowed_image_dependencies(out_channels: int, in_channels: int, height: int, width: int,
                               channel_groups: int) -> np.ndarray:  # fmt: skip
    """(Co, H, W, C, H, W) bool: output (o, i, j) may depend on input (c, k, l) iff the input comes
    earlier in the chain-rule order: pixel (k, l) before (i, j) in raster order, or the same pixel
    and group(c) < group(o)."""
    G = channel_groups
    if not isinstance(G, (int, np.integer)) or isinstance(G, bool) or not 1 <= G <= min(in_channels, out_channels):
        raise ValueError(f"channel_groups: expected an int in [1, min(Co={out_channels}, C={in_channels})], got {G!r}")
    k_out = image_order_keys(out_channels, height, width, G)
    k_in = image_order_keys(in_channels, height, width, G)
    return k_in[None, None, None, :, :, :] < k_out[:, :, :, None, None, None]


def assert_image_causal(fn, x, levels: int, channel_groups: int | None = None, *, full: bool = False,
                        n_trials: int = 2, seed: int = 0, name: str | None = None) -> np.ndarray:  # fmt: skip
    """Assert that an image model is causal in raster order AND in channel order, bit for bit.

    fn: x (B, C, H, W) int -> outputs (B, Co, H, W, ...), e.g. a PixelCNN's logits
    (B, C, H, W, levels). channel_groups: G (default C: every channel its own group, R then
    G then B); the output at (o, i, j) may depend only on pixels before (i, j) in raster
    order and, at (i, j) itself, on input channels of groups < group(o).

    Two experiments, both exact:
      1. the dependency tensor (`image_dependencies`): each input entry perturbed alone;
      2. suffix perturbation: for each place s in the order, every input entry at or after s
         is perturbed at once; the outputs at places <= s must not change by one bit.
    full=True also asserts every allowed dependency is present (a model with no blind spot
    and a receptive field covering the image, such as a deep enough Gated PixelCNN).
    Returns the dependency tensor D (Co, H, W, C, H, W).

        assert_image_causal(lambda img: my_pixelcnn_logits(img), x, levels=256)
        assert_image_causal(lambda img: my_pixelcnnpp_params(img), x, levels=256, channel_groups=1)
    """
    name = name or getattr(fn, "__qualname__", repr(fn))
    xn = _image_input(x, levels)
    C, H, W = xn.shape[1:]
    G = C if channel_groups is None else channel_groups
    image_order_keys(C, H, W, G)  # ValueError for a bad channel_groups before any work
    D = image_dependencies(fn, x, levels=levels, n_trials=n_trials, seed=seed)
    Co = D.shape[0]
    allowed = allowed_image_dependencies(Co, C, H, W, G)
    bad = np.argwhere(D & ~allowed)
    if bad.size:
        o, i, j, c, k, l = (int(v) for v in bad[0])
        raise AssertionError(
            f"{name} is not causal in raster and channel order (channel_groups={G}): the output at channel {o}, "
            f"pixel ({i}, {j}) changed when the input x[:, {c}, {k}, {l}] was perturbed "
            f"({int(bad.shape[0])} forbidden dependencies in all).\n"
            f"Receptive field of that output (channel by channel, 1 = depends):\n{_format_field(D[o, i, j])}"
        )
    rng = np.random.default_rng(seed + 1)
    base = _image_output(fn(x), (H, W))
    k_in = image_order_keys(C, H, W, G)
    k_out = image_order_keys(Co, H, W, G)
    for s in range(H * W * G):
        for _ in range(n_trials):
            out = _image_output(fn(_restore(_perturb_entries(xn, k_in >= s, rng, levels), x)), (H, W))
            moved = np.argwhere(_changed_entries(base, out) & (k_out <= s))
            if moved.size:
                o, i, j = (int(v) for v in moved[0])
                raise AssertionError(
                    f"{name} is not causal (channel_groups={G}): perturbing every input entry from place {s} of "
                    f"the chain-rule order on changed the output at channel {o}, pixel ({i}, {j}) "
                    f"(place {k_out[o, i, j]})."
                )
    if full:
        missing = np.argwhere(allowed & ~D)
        if missing.size:
            o, i, j, c, k, l = (int(v) for v in missing[0])
            raise AssertionError(
                f"{name} ignores part of its context: the output at channel {o}, pixel ({i}, {j}) does not depend "
                f"on the earlier input x[:, {c}, {k}, {l}] ({int(missing.shape[0])} missing dependencies in all).\n"
                f"Receptive field of that output:\n{_format_field(D[o, i, j])}"
            )
    return D


def _format_field(field: np.ndarray) -> str:
    """A (C, H, W) bool field as C grids of 1/. ."""
    out = []
    for c, grid in enumerate(field):
        out.append(f"channel {c}:")
        out += ["  " + " ".join("1" if v else "." for v in row) for row in grid]
    return "\n".join(out)


def draw_receptive_field(fields, path: str, *, positions=None, titles=None, highlight=None,
                         highlight_label: str = "blind spot", legend_label: str = "receptive field") -> str:  # fmt: skip
    """Draw one or more receptive fields side by side into a PNG (matplotlib, Agg backend).

    fields: an (H, W) or (C, H, W) bool array (a `receptive_field`; channels are merged: a pixel
    is drawn if any of its channels is in the field), or a list of them (one panel each).
    positions: the output pixel (i, j) of each panel, drawn in red. titles: one per panel.
    highlight: per panel None or an (H, W) bool mask drawn hatched in orange (e.g. the
    PixelCNN's blind spot). Returns path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    single = isinstance(fields, np.ndarray) or _module(fields) in ("torch", "cupy")
    fields = [fields] if single else list(fields)
    n = len(fields)
    positions = [None] * n if positions is None else ([positions] if single else list(positions))
    titles = [None] * n if titles is None else ([titles] if single else list(titles))
    highlight = [None] * n if highlight is None else ([highlight] if single else list(highlight))
    if not len(positions) == len(titles) == len(highlight) == n:
        raise ValueError(f"positions, titles, highlight: expected {n} entries each (one per field)")
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.9), squeeze=False)
    for ax, field, pos, title, hi in zip(axes[0], fields, positions, titles, highlight):
        f = _to_numpy(field).astype(bool)
        if f.ndim == 3:
            f = f.any(axis=0)
        if f.ndim != 2:
            raise ValueError(f"fields: expected (H, W) or (C, H, W) arrays, got shape {f.shape}")
        H, W = f.shape
        ax.imshow(f.astype(float), cmap=ListedColormap(["#f4f4f4", "#3a6ea5"]), vmin=0, vmax=1)
        if hi is not None:
            for i, j in np.argwhere(_to_numpy(hi).astype(bool)):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#f5b041", edgecolor="#b9770e", hatch="//"))
        if pos is not None:
            ax.add_patch(Rectangle((pos[1] - 0.5, pos[0] - 0.5), 1, 1, facecolor="#c0392b"))
        ax.set_xticks(np.arange(-0.5, W, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, H, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
        if title:
            ax.set_title(title, fontsize=10)
    handles = [Patch(color="#3a6ea5", label=legend_label), Patch(color="#c0392b", label="predicted pixel")]
    if any(h is not None for h in highlight):
        handles.append(Patch(facecolor="#f5b041", edgecolor="#b9770e", hatch="//", label=highlight_label))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
