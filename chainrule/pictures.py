"""Pictures for the README, drawn from measurements (never by hand).

blind_spot_picture   the receptive field of a plain PixelCNN next to a Gated PixelCNN's, each
                     measured bit for bit by perturbing every input pixel of a model with
                     random weights (`reference.checks.receptive_field`), the PixelCNN's
                     blind spot (`reference.pixelcnn.blind_spot`) hatched.
"""

from __future__ import annotations

import numpy

SIZE, POSITION, LAYERS = 11, (7, 5), 6


def blind_spot_fields(size: int = SIZE, position=POSITION, layers: int = LAYERS, seed: int = 0) -> dict:
    """The measured receptive fields (size x size bool) of a PixelCNN (a 3x3 mask-A layer, then
    layers - 1 residual blocks with a 3x3 mask-B convolution) and of a Gated PixelCNN of `layers`
    3x3 layers, at output pixel `position` of a grayscale size x size image, and the PixelCNN's
    blind spot there. -> {"pixelcnn", "gated", "blind_spot", "earlier", "configs"}."""
    from chainrule.reference import checks
    from chainrule.reference import pixelcnn as pc

    rng = numpy.random.default_rng(seed)
    x = rng.integers(0, 4, (2, 1, size, size))
    out = {"configs": {}}
    for kind, n in (("pixelcnn", layers - 1), ("gated", layers)):
        config = pc.Config(kind=kind, channels=1, height=size, width=size, levels=4, hidden=8, n_layers=n,
                           kernel_size=3, input_kernel=3)  # fmt: skip
        params = pc.random_params(config, rng)
        field = checks.receptive_field(lambda img: pc.forward(params, config, img), x, (0,) + tuple(position),
                                       levels=4)  # fmt: skip
        out[kind], out["configs"][kind] = field[0], config
    out["blind_spot"] = pc.blind_spot(out["configs"]["pixelcnn"], position)
    i, j = position
    out["earlier"] = (numpy.arange(size)[:, None] * size + numpy.arange(size)) < i * size + j
    return out


def blind_spot_picture(path: str, size: int = SIZE, position=POSITION, layers: int = LAYERS) -> str:
    """Draw the PixelCNN's receptive field (with its blind spot hatched) next to the Gated PixelCNN's
    complete one into a PNG at `path`. Returns path."""
    from chainrule.reference import checks

    f = blind_spot_fields(size, position, layers)
    n_earlier = int(f["earlier"].sum())
    titles = [
        f"PixelCNN, {layers} masked 3x3 layers:\nsees {int(f['pixelcnn'].sum())} of {n_earlier} earlier pixels",
        f"Gated PixelCNN, {layers} layers:\nsees {int(f['gated'].sum())} of {n_earlier} earlier pixels",
    ]
    return checks.draw_receptive_field([f["pixelcnn"], f["gated"]], path, positions=[position, position],
                                       titles=titles, highlight=[f["blind_spot"], None],
                                       highlight_label="blind spot (missed at any depth)",
                                       legend_label="receptive field (measured)")  # fmt: skip
