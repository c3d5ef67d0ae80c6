"""The models the application trains and samples, by name: how to build each one's config for a
dataset, its parameters, its training examples, and its sampler. The computation is fast/'s.

    name        module           data it models                default data
    gpt         fast.gpt         byte / mu-law sequences       stdlib-bytes
    lstm        fast.rnn         byte / mu-law sequences       stdlib-bytes
    gru         fast.rnn         byte / mu-law sequences       stdlib-bytes
    nplm        fast.nplm        byte / mu-law sequences       stdlib-bytes
    pixelcnn    fast.pixelcnn    images (any channels, levels) digits
    gated       fast.pixelcnn    images (Gated PixelCNN)       digits
    pixelcnnpp  fast.pixelcnnpp  images, H and W multiples of 4 digits

A sequence model sees a text stream or audio clips as windows of `length` tokens (the app-level
setting "length": GPT's block_size; 128 for the others), scored with the model's bos token before
the first one. An image model sees whole images. `make_config` fills the data-dependent fields
(vocabulary, channels, height, width, levels) from the dataset and takes everything else from the
defaults below, overridden by name.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field

import numpy as np

from chainrule import data as cdata

SEQUENCE_KINDS = ("text", "audio")
IMAGE_KINDS = ("image",)
APP_KEYS = ("length",)  # settings of the application, not of the model's Config


@dataclass(frozen=True)
class Model:
    """One entry of the table: the fast module, the dataset kinds it models, the default dataset, and
    the config fields that are not taken from the data (the model's default size)."""

    name: str
    module: str
    description: str
    kinds: tuple[str, ...]
    default_data: str
    defaults: dict = field(default_factory=dict)
    length: int | None = None  # sequence models: default window length (None: the config's block_size)

    def fast(self):
        """The fast module (imported on first use)."""
        return importlib.import_module(self.module)

    @property
    def sequence(self) -> bool:
        return self.kinds == SEQUENCE_KINDS


_MODELS = {
    m.name: m
    for m in (
        Model("gpt", "chainrule.fast.gpt", "GPT-2 decoder-only transformer (Radford et al. 2019)", SEQUENCE_KINDS,
              "stdlib-bytes", {"block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128}),
        Model("lstm", "chainrule.fast.rnn", "LSTM language model (Hochreiter & Schmidhuber 1997; Mikolov et al. 2010)",
              SEQUENCE_KINDS, "stdlib-bytes", {"kind": "lstm", "n_embd": 64, "hidden": 256, "n_layer": 1}, 128),
        Model("gru", "chainrule.fast.rnn", "GRU language model (Cho et al. 2014)", SEQUENCE_KINDS, "stdlib-bytes",
              {"kind": "gru", "n_embd": 64, "hidden": 256, "n_layer": 1}, 128),
        Model("nplm", "chainrule.fast.nplm", "neural probabilistic language model (Bengio et al. 2003)", SEQUENCE_KINDS,
              "stdlib-bytes", {"order": 6, "n_embd": 32, "hidden": 256}, 128),
        Model("pixelcnn", "chainrule.fast.pixelcnn", "PixelCNN with masked convolutions (van den Oord et al. 2016)",
              IMAGE_KINDS, "digits", {"kind": "pixelcnn", "hidden": 32, "n_layers": 4, "kernel_size": 3,
                                      "input_kernel": 5}),
        Model("gated", "chainrule.fast.pixelcnn", "Gated PixelCNN (van den Oord et al. 2016, PixelCNN decoders)",
              IMAGE_KINDS, "digits", {"kind": "gated", "hidden": 32, "n_layers": 5, "kernel_size": 3,
                                      "input_kernel": 5}),
        Model("pixelcnnpp", "chainrule.fast.pixelcnnpp", "PixelCNN++ with discretized logistic mixtures (Salimans et al. "
              "2017)", IMAGE_KINDS, "digits", {"nr_filters": 32, "nr_resnet": 1, "nr_logistic_mix": 5,
                                               "dropout_p": 0.0}),
    )
}  # fmt: skip


def models() -> dict[str, str]:
    """name -> one-line description of every model the application knows."""
    return {name: m.description for name, m in _MODELS.items()}


def get(name: str) -> Model:
    """The table entry of model `name`; ValueError listing the known names."""
    if name not in _MODELS:
        raise ValueError(f"model: expected one of {', '.join(_MODELS)}, got {name!r}")
    return _MODELS[name]


def data_kind(data_name: str) -> str:
    """The kind ("text", "image", "audio") of a dataset that can train a model (not stdlib-words)."""
    table = cdata.datasets()
    if data_name not in table or data_name == "stdlib-words":
        usable = [n for n in table if n != "stdlib-words"]
        raise ValueError(f"data: expected one of {', '.join(usable)}, got {data_name!r}")
    return cdata.info(data_name)[0]


def check_pair(model: Model, data_name: str) -> None:
    """ValueError unless `model` models the kind of data `data_name` is."""
    kind = data_kind(data_name)
    if kind not in model.kinds:
        fits = [n for n in cdata.datasets() if n != "stdlib-words" and data_kind(n) in model.kinds]
        raise ValueError(f"data: model {model.name!r} models {'/'.join(model.kinds)} data ({', '.join(fits)}), "
                         f"got {data_name!r} ({kind})")  # fmt: skip


# ----------------------------------------------------------------------------- configs


def _fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def config_class(model: Model):
    """The model's Config dataclass (that of its fast module, the reference's)."""
    return model.fast().Config


def settings(model: Model) -> list[str]:
    """The names `make_config` accepts: the Config's fields, and "length" for sequence models."""
    return list(_fields(config_class(model))) + (list(APP_KEYS) if model.sequence else [])


def _from_data(model: Model, data_name: str) -> dict:
    """The config fields a dataset decides: vocabulary (sequences), or channels, height, width, levels."""
    kind, levels = cdata.info(data_name)
    if kind in SEQUENCE_KINDS:
        return {"vocab_size": levels}
    shape = cdata.load(data_name, "validation", 1).x.shape
    return {"channels": shape[1], "height": shape[2], "width": shape[3], "levels": levels}


def make_config(model: Model, data_name: str, overrides: dict | None = None):
    """(Config of the model for `data_name`, app settings {"length": ...}).

    overrides: {field: value} over the defaults: a field of the model's Config or "length"
    (sequence models). Unknown names raise ValueError listing the known ones; the Config
    validates the values (ValueError naming the field).
    """
    check_pair(model, data_name)
    overrides = dict(overrides or {})
    cls = config_class(model)
    known = _fields(cls)
    for key in overrides:
        if key not in settings(model):
            raise ValueError(f"config: {model.name} has no setting {key!r}; expected one of "
                             f"{', '.join(settings(model))}")  # fmt: skip
    kwargs = {**model.defaults, **_from_data(model, data_name)}
    kwargs.update({k: v for k, v in overrides.items() if k in known})
    config = cls(**kwargs)
    if getattr(config, "cond_channels", 0):
        raise ValueError("config: cond_channels: spatial conditioning needs maps no dataset here provides")
    wanted, labelled = getattr(config, "num_classes", 0), cdata.classes(data_name)
    if wanted and not labelled:
        raise ValueError(f"config: num_classes={wanted} needs class labels; {data_name!r} has none")
    if wanted and wanted < labelled:
        raise ValueError(f"config: num_classes: expected at least {labelled} (the classes of {data_name!r}), "
                         f"got {wanted}")  # fmt: skip
    app = {}
    if model.sequence:
        length = overrides.get("length", model.length or config.block_size)
        if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 1:
            raise ValueError(f"config: length: expected a positive int, got {length!r}")
        if hasattr(config, "block_size") and length > config.block_size:
            raise ValueError(f"config: length: expected at most block_size={config.block_size}, got {length}")
        app["length"] = int(length)
    return config, app


def config_dict(config) -> dict:
    """A Config as a JSON-ready dict (field -> value)."""
    return dataclasses.asdict(config)


def config_from_dict(model: Model, values: dict):
    """The Config a checkpoint's `config_dict` describes; ValueError on fields the model lacks."""
    cls = config_class(model)
    unknown = set(values) - set(_fields(cls))
    if unknown:
        raise ValueError(f"config: fields {sorted(unknown)} are not fields of {model.module}.Config")
    return cls(**values)


def field_type(model: Model, key: str) -> str:
    """The annotation of a Config field as written ("int", "float | None", ...); "int" for "length"."""
    known = _fields(config_class(model))
    return "int" if key not in known else str(known[key].type)


# ----------------------------------------------------------------------------- parameters and data


def init_params(model: Model, config, seed: int) -> dict:
    """The model's initialization, reference/<module>.init(config, default_rng(seed)): float64 NumPy arrays."""
    reference = importlib.import_module("chainrule.reference." + model.module.split(".")[-1])
    return reference.init(config, np.random.default_rng(seed))


def n_params(model: Model, config) -> int:
    """The number of parameters (scalars) of the model with `config`, from the reference's
    param_shapes (nothing is allocated)."""
    reference = importlib.import_module("chainrule.reference." + model.module.split(".")[-1])
    return int(sum(int(np.prod(shape)) for shape in reference.param_shapes(config).values()))


def examples(model: Model, dataset: cdata.Dataset, app: dict, config=None):
    """The training examples of a dataset for `model`: images as they are (N, C, H, W), or with a
    class-conditional config (num_classes > 0) the pair (images, labels (N,)); a text stream as
    consecutive windows (N, length); audio clips (N, T) cut into consecutive windows (N T // length,
    length) (the tail of each clip shorter than a window is dropped)."""
    if not model.sequence:
        if getattr(config, "cond_channels", 0):
            raise ValueError("config: cond_channels: spatial conditioning needs maps no dataset here provides")
        classes = getattr(config, "num_classes", 0)
        if not classes:
            return dataset.x
        labels = dataset.cond
        if labels is None or labels.ndim != 1:
            raise ValueError(f"config: num_classes={classes} needs class labels; {dataset.name!r} has none")
        if labels.max() >= classes:
            raise ValueError(f"config: num_classes: expected at least {int(labels.max()) + 1} (the labels of "
                             f"{dataset.name!r}), got {classes}")  # fmt: skip
        return dataset.x, labels
    length = app["length"]
    if dataset.kind == "text":
        return cdata.windows(dataset.x, length)
    clips = dataset.x
    if clips.shape[1] < length:
        raise ValueError(f"config: length: expected at most the clip length {clips.shape[1]}, got {length}")
    per = clips.shape[1] // length
    return clips[:, : per * length].reshape(-1, length)


def log_prob_fn(model: Model, config):
    """log_prob(params, batch, rng=None) -> (B,) nats for fast.train: batch is x, or (x, labels (B,))
    for a class-conditional image model; rng feeds dropout where the model has it."""
    import inspect

    fn = model.fast().log_prob
    takes_rng = "rng" in inspect.signature(fn).parameters

    def log_prob(params, batch, rng=None):
        kwargs = {"rng": rng} if takes_rng else {}
        if isinstance(batch, tuple):
            x, labels = batch
            return fn(params, config, x, cond=labels, **kwargs)
        return fn(params, config, batch, **kwargs)

    return log_prob


def metric(dataset_kind: str) -> str:
    """The unit evaluation reports (fast.train's METRICS): bits per byte for text, bits per dim for
    images (per sub-pixel) and audio (per sample)."""
    return {"text": "bits/byte", "audio": "bits/dim", "image": "bits/dim"}[dataset_kind]


# ----------------------------------------------------------------------------- sampling


def sample(model: Model, params: dict, config, rng: np.random.Generator, n: int, *, length: int,
           processors=None) -> np.ndarray:  # fmt: skip
    """n samples -> int64 NumPy array: sequences (n, length) (the bos token not included), images
    (n, C, H, W). Sequence models: ancestral sampling from bos with the fast module's `generate`, the
    logits through `processors` ({name: value or kwargs}: fast.sampling.chain's names, and generation
    settings such as eos_token_id or min_new_tokens, GenerationConfig's names; a row that ends at eos
    holds pad after it); image models draw
    every entry from its exact conditional (processors are not defined for them)."""
    import torch

    from chainrule.fast import sampling as fsampling

    fast = model.fast()
    if not model.sequence:
        if processors:
            raise ValueError(f"processors: logits processors apply to sequence models, not to {model.name!r}")
        classes = getattr(config, "num_classes", 0)
        cond = {"cond": np.arange(n) % classes} if classes else {}  # class-conditional: classes in turn
        return fast.sample(params, config, rng, n, **cond).cpu().numpy()
    if hasattr(config, "block_size") and length > config.block_size:
        raise ValueError(f"length: expected at most block_size={config.block_size}, got {length}")
    from chainrule.reference.generation import GenerationConfig

    spec = dict(processors or {})
    settings = {k: spec.pop(k) for k in list(spec) if k not in fsampling.PROCESSORS}
    chain = fsampling.chain(spec)
    generation = GenerationConfig(max_new_tokens=length, do_sample=True, top_k=None, **settings)
    prompt = torch.full((n, 1), config.bos_token, dtype=torch.int64)
    u = rng.random((n, length))  # as fast.<model>.sample draws them
    out = fast.generate(params, config, prompt, generation_config=generation, processors=chain, u=u)[:, 1:]
    pad = out.new_full((n, length - out.shape[1]), generation.pad_token_id or 0)  # rows all ended early
    return torch.cat([out, pad], dim=1).cpu().numpy()
