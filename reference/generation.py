"""Generation as it is run: the decoding loop with end of sequence and stopping, and a
`GenerationConfig` with Hugging Face's field names that builds the logits processors in
Hugging Face's order.

The loop (`decode`), for a batch of B rows after a prompt (B, T0):

    for n = 0 .. N-1:
        ids     = (prompt, x_0 .. x_{n-1})                       (B, T0 + n), the tokens so far
        logits <- process(logits, ids) for each processor        (sampling's processor protocol)
        x_n    <- argmax(logits)   (u is None: greedy, the first index on ties)
                  or the inverse-CDF sample with u[:, n]
        x_n    <- pad_token_id in the rows already finished
        a row finishes when x_n is one of eos_token_id, or when its ids now end with one of
        stop_sequences (the eos / the stop sequence is kept)
        stop when every row has finished; else  logits, cache <- step(cache, x_n)

Output: the new tokens (B, n), n <= N the number of steps run, i.e. the largest number of
tokens any row generated (its eos included); a row that finished earlier holds pad after its
eos. That is Hugging Face's `generate` loop (`_sample`): unfinished rows, pad after eos,
early exit when all rows are done.

`GenerationConfig` mirrors `transformers.GenerationConfig` for every setting chainrule
supports, with HF's names and HF's effective defaults (`max_length` 20, `top_k` 50 when
sampling, ...), built from a HF generation config's dict by `GenerationConfig.from_dict`
(unknown or unsupported settings are refused by name). `logits_processors` turns it into
processors in HF's order (`_get_logits_processor`); `generate` is the loop every decoder's
`generate(..., generation_config=...)` runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy

from chainrule.reference import sampling
from chainrule.reference.xp import namespace

# ----------------------------------------------------------------------------- token ids


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


def check_token_ids(value, vocab_size: int, name: str) -> tuple[int, ...]:
    """An int or a non-empty sequence of ints in [0, vocab_size) -> tuple of ints; None -> ().
    ValueError naming `name` otherwise."""
    if value is None:
        return ()
    ids = (value,) if _is_int(value) else value
    try:
        ids = tuple(ids)
    except TypeError:
        raise ValueError(f"{name}: expected an int or a sequence of ints, got {value!r}") from None
    if not ids or not all(_is_int(i) and 0 <= i < vocab_size for i in ids):
        raise ValueError(f"{name}: expected token ids in [0, {vocab_size}), got {value!r}")
    return tuple(int(i) for i in ids)


def check_pad(pad_token_id, eos: tuple, vocab_size: int) -> int | None:
    """The pad id: pad_token_id (an int in [0, V)), else the first eos id (as HF), else None."""
    if pad_token_id is None:
        return eos[0] if eos else None
    if not _is_int(pad_token_id) or not 0 <= pad_token_id < vocab_size:
        raise ValueError(f"pad_token_id: expected an int in [0, {vocab_size}), got {pad_token_id!r}")
    return int(pad_token_id)


def check_stop_sequences(stop_sequences, vocab_size: int) -> tuple[tuple[int, ...], ...]:
    """A sequence of non-empty token-id sequences -> tuple of tuples; ValueError naming stop_sequences."""
    try:
        out = tuple(check_token_ids(tuple(s), vocab_size, "stop_sequences") for s in stop_sequences)
    except TypeError:
        raise ValueError(f"stop_sequences: expected sequences of token ids, got {stop_sequences!r}") from None
    return out


def ends_with(ids, sequences) -> object:
    """(B,) bool: row b of ids (B, t) ends with one of `sequences` (tuples of ids)."""
    xp = namespace(ids)
    hit = xp.zeros(ids.shape[0], dtype=bool)
    for s in sequences:
        if len(s) <= ids.shape[1]:
            hit |= xp.all(ids[:, ids.shape[1] - len(s):] == xp.asarray(s)[None, :], axis=1)
    return hit


# ----------------------------------------------------------------------------- the loop


def decode(logits, cache, step, prompt, max_new_tokens: int, *, processors=(), u=None, eos_token_id=(),
           pad_token_id=None, stop_sequences=()):  # fmt: skip
    """The autoregressive loop every model's `generate` runs (module docstring).

    logits: (B, V) the next-token logits after the prompt; cache: the model's state after it;
    step(cache, tokens (B,)) -> (logits (B, V), new cache), pure; prompt: (B, T0) int, the
    tokens the processors see first; processors: callables of the processor protocol
    (sampling.as_processor); u: None (greedy) or (B, N) uniforms in [0, 1); eos_token_id: a
    tuple of ids (check_token_ids); pad_token_id: the id a finished row emits (check_pad);
    stop_sequences: tuples of ids. Returns the new tokens, (B, n) int64, n <= N.
    """
    xp = namespace(logits)
    B = logits.shape[0]
    u = sampling.check_uniforms(u, (B, max_new_tokens), xp)
    processors = [sampling.as_processor(p) for p in processors]
    if (eos_token_id or stop_sequences) and pad_token_id is None:
        raise ValueError("pad_token_id: expected an id for the rows that have finished, got None")
    ids = xp.asarray(prompt).astype(xp.int64)  # (B, T0 + n)
    finished = xp.zeros(B, dtype=bool)
    T0 = ids.shape[1]
    for n in range(max_new_tokens):
        for process in processors:
            logits = process(logits, ids)
        logits = xp.where(finished[:, None], 0.0, logits)  # a finished row's choice is not used
        token = sampling.greedy(logits) if u is None else sampling.sample(logits, u[:, n])  # (B,)
        token = xp.where(finished, -1 if pad_token_id is None else pad_token_id, token)
        ids = xp.concatenate([ids, token[:, None].astype(xp.int64)], axis=1)
        if eos_token_id:
            finished = finished | xp.isin(token, xp.asarray(eos_token_id))
        if stop_sequences:
            finished = finished | ends_with(ids, stop_sequences)
        if bool(xp.all(finished)) or n + 1 == max_new_tokens:
            break
        logits, cache = step(cache, token)
    return ids[:, T0:]  # (B, n)


# ----------------------------------------------------------------------------- GenerationConfig


@dataclass(frozen=True)
class GenerationConfig:
    """The generation settings chainrule supports, with Hugging Face's names and effective
    defaults (transformers' GenerationConfig, v5: unset fields take `_get_default_generation_params`).

    Lengths: max_new_tokens, else max_length - T0 (HF's max_length counts the prompt; default
    20); min_new_tokens / min_length (eos forbidden until reached). Search: do_sample (the
    warpers below act only when sampling, as in HF), num_beams (> 1: beam search, with
    length_penalty and early_stopping), num_return_sequences. Ids: eos_token_id (one or
    several), pad_token_id (default: the first eos), bos_token_id (informational).
    Warpers: temperature, top_k (HF's default 50!), top_p, typical_p, min_p, epsilon_cutoff,
    eta_cutoff. Processors: repetition_penalty, no_repeat_ngram_size, bad_words_ids,
    sequence_bias, suppress_tokens, begin_suppress_tokens, forced_bos_token_id,
    forced_eos_token_id, exponential_decay_length_penalty (start_index, decay_factor).
    chainrule's own (not HF fields): stop_sequences (token-id sequences that end a row, kept
    in the output; HF's stop_strings need a tokenizer), frequency_penalty and
    presence_penalty (OpenAI / vLLM, over the generated tokens), logit_bias ({id: bias}).
    """

    max_new_tokens: int | None = None
    max_length: int = 20
    min_new_tokens: int = 0
    min_length: int = 0
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    eos_token_id: tuple | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    typical_p: float = 1.0
    min_p: float | None = None
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple | None = None
    sequence_bias: dict | None = None
    suppress_tokens: tuple | None = None
    begin_suppress_tokens: tuple | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: tuple | None = None
    exponential_decay_length_penalty: tuple | None = None
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    stop_sequences: tuple = ()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict | None = None

    def __post_init__(self):
        def setting(name, value):
            object.__setattr__(self, name, value)

        def count(name, low, allow_none=False):
            value = getattr(self, name)
            if allow_none and value is None:
                return
            if not _is_int(value) or value < low:
                raise ValueError(f"generation_config.{name}: expected an int >= {low}, got {value!r}")

        def number(name, ok, want, allow_none=False):
            value = getattr(self, name)
            if allow_none and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float, numpy.floating, numpy.integer)) \
                    or not math.isfinite(value) or not ok(float(value)):
                raise ValueError(f"generation_config.{name}: expected {want}, got {value!r}")

        count("max_new_tokens", 0, allow_none=True)
        count("max_length", 1)
        count("min_new_tokens", 0)
        count("min_length", 0)
        count("num_beams", 1)
        count("num_return_sequences", 1)
        count("top_k", 0, allow_none=True)
        count("no_repeat_ngram_size", 0)
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"generation_config.do_sample: expected True or False, got {self.do_sample!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"generation_config.early_stopping: expected True, False or 'never', "
                             f"got {self.early_stopping!r}")
        number("temperature", lambda v: v >= 0, "a finite number >= 0")
        number("top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
        number("typical_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
        number("min_p", lambda v: 0 < v <= 1, "a number in (0, 1]", allow_none=True)
        number("epsilon_cutoff", lambda v: 0 <= v < 1, "a number in [0, 1)")
        number("eta_cutoff", lambda v: 0 <= v < 1, "a number in [0, 1)")
        number("repetition_penalty", lambda v: v > 0, "a finite number > 0")
        number("length_penalty", lambda v: True, "a finite number")
        number("frequency_penalty", lambda v: True, "a finite number")
        number("presence_penalty", lambda v: True, "a finite number")
        for name in ("eos_token_id", "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens"):
            value = getattr(self, name)
            if value is not None:
                ids = (value,) if _is_int(value) else value
                try:
                    ids = tuple(ids)
                except TypeError:
                    raise ValueError(f"generation_config.{name}: expected an int or a list of ints, "
                                     f"got {value!r}") from None
                if not all(_is_int(i) and i >= 0 for i in ids):
                    raise ValueError(f"generation_config.{name}: expected token ids >= 0, got {value!r}")
                setting(name, tuple(int(i) for i in ids))
        for name in ("pad_token_id", "bos_token_id", "forced_bos_token_id"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise ValueError(f"generation_config.{name}: expected a token id >= 0, got {value!r}")
        if self.bad_words_ids is not None:
            try:
                words = tuple(tuple(int(i) for i in w) for w in self.bad_words_ids)
            except (TypeError, ValueError):
                raise ValueError(f"generation_config.bad_words_ids: expected lists of token ids, "
                                 f"got {self.bad_words_ids!r}") from None
            setting("bad_words_ids", words)
        try:
            setting("stop_sequences", tuple(tuple(int(i) for i in s) for s in self.stop_sequences))
        except (TypeError, ValueError):
            raise ValueError(f"generation_config.stop_sequences: expected lists of token ids, "
                             f"got {self.stop_sequences!r}") from None
        if self.sequence_bias is not None:
            items = self.sequence_bias.items() if isinstance(self.sequence_bias, dict) else self.sequence_bias
            try:  # HF also writes it as [[ids, bias], ...]
                setting("sequence_bias", {tuple(int(i) for i in k): float(v) for k, v in items})
            except (TypeError, ValueError):
                raise ValueError(f"generation_config.sequence_bias: expected {{(ids...): bias}}, "
                                 f"got {self.sequence_bias!r}") from None
        if self.logit_bias is not None:
            try:
                setting("logit_bias", {int(k): float(v) for k, v in dict(self.logit_bias).items()})
            except (TypeError, ValueError):
                raise ValueError(f"generation_config.logit_bias: expected {{id: bias}}, got {self.logit_bias!r}") from None
        decay = self.exponential_decay_length_penalty
        if decay is not None:
            try:
                start, factor = decay
            except (TypeError, ValueError):
                raise ValueError(f"generation_config.exponential_decay_length_penalty: expected "
                                 f"(start_index, decay_factor), got {decay!r}") from None
            if not _is_int(start) or start < 0 or isinstance(factor, bool) or not float(factor) > 0:
                raise ValueError(f"generation_config.exponential_decay_length_penalty: expected "
                                 f"(start_index >= 0, decay_factor > 0), got {decay!r}")
            setting("exponential_decay_length_penalty", (int(start), float(factor)))
        if self.num_return_sequences > 1 and not self.do_sample and self.num_return_sequences > self.num_beams:
            raise ValueError(f"generation_config.num_return_sequences: expected at most num_beams="
                             f"{self.num_beams} without sampling (greedy copies are identical), "
                             f"got {self.num_return_sequences}")

    @classmethod
    def from_dict(cls, hf: dict) -> "GenerationConfig":
        """From a Hugging Face generation config's dict (`GenerationConfig.to_dict()`, or the
        `generation_config.json` of a checkpoint). None means HF's default. Settings that never
        change the tokens (output and cache options, assistant settings, versions) are ignored;
        a setting chainrule does not implement is refused by name unless it has its neutral
        value; an unknown key is refused."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kept = {}
        for key, value in dict(hf).items():
            if key in fields:
                if value is not None:
                    kept[key] = value
            elif key in HF_IGNORED:
                continue
            elif key in HF_NEUTRAL:
                if value is not None and value != HF_NEUTRAL[key]:
                    raise ValueError(f"generation_config[{key!r}]: not supported by chainrule "
                                     f"(expected None or {HF_NEUTRAL[key]!r}), got {value!r}")
            else:
                raise ValueError(f"generation_config[{key!r}]: unknown setting")
        return cls(**kept)


# Hugging Face settings that never change the tokens generate returns.
HF_IGNORED = frozenset({
    "transformers_version", "_from_model_config", "_commit_hash", "use_cache", "cache_implementation",
    "cache_config", "max_cache_len", "compile_config", "disable_compile", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate", "low_memory",
    "prefill_chunk_size", "continuous_batching_config", "is_assistant", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind",
    "target_lookbehind", "assistant_early_exit", "assistant_ensemble_weight", "decoder_start_token_id",
})  # fmt: skip
# Hugging Face settings chainrule does not implement, with the value that switches them off.
HF_NEUTRAL = {
    "max_time": None, "stop_strings": None, "use_mtp": False, "top_h": None, "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0, "renormalize_logits": False, "remove_invalid_values": False,
    "token_healing": False, "guidance_scale": 1.0, "watermarking_config": None, "penalty_alpha": None,
    "dola_layers": None, "diversity_penalty": 0.0, "num_beam_groups": 1, "constraints": None,
    "force_words_ids": None, "prompt_lookup_num_tokens": None, "max_matching_ngram_size": None,
    "speculation_type": None,
}  # fmt: skip


# ----------------------------------------------------------------------------- processors


def logits_processors(config: GenerationConfig, prompt_length: int, max_length: int, table=None):
    """(processors, warpers): the `Processor`s a GenerationConfig implies, in Hugging Face's order
    (`_get_logits_processor`): the penalties and constraints, then -- only when
    config.do_sample -- the warpers. A user's own processors go between the two (HF appends
    custom processors to the first list). prompt_length: T0 (padded); max_length: T0 + N.
    table: the processor functions (default reference.sampling.PROCESSORS; fast passes its own).
    """
    c = config
    eos = c.eos_token_id or ()
    pre = []
    if c.sequence_bias:
        pre.append(("sequence_bias", {"sequence_bias": c.sequence_bias}))
    if c.logit_bias:
        pre.append(("logit_bias", {"bias": c.logit_bias}))
    if c.repetition_penalty != 1.0:
        pre.append(("repetition_penalty", {"penalty": c.repetition_penalty}))
    if c.frequency_penalty != 0.0:
        pre.append(("frequency_penalty", {"penalty": c.frequency_penalty, "prompt_length": prompt_length}))
    if c.presence_penalty != 0.0:
        pre.append(("presence_penalty", {"penalty": c.presence_penalty, "prompt_length": prompt_length}))
    if c.no_repeat_ngram_size > 0:
        pre.append(("no_repeat_ngram", {"n": c.no_repeat_ngram_size}))
    if c.bad_words_ids is not None:
        pre.append(("bad_words", {"bad_words_ids": c.bad_words_ids, "eos_token_id": eos or None}))
    if c.min_length > 0 and eos:
        pre.append(("min_length", {"min_length": c.min_length, "eos_token_id": eos}))
    if c.min_new_tokens > 0 and eos:
        pre.append(("min_new_tokens", {"prompt_length": prompt_length, "min_new_tokens": c.min_new_tokens,
                                       "eos_token_id": eos}))  # fmt: skip
    if c.forced_bos_token_id is not None:
        pre.append(("forced_bos", {"bos_token_id": c.forced_bos_token_id}))
    if c.forced_eos_token_id is not None:
        pre.append(("forced_eos", {"max_length": max_length, "eos_token_id": c.forced_eos_token_id}))
    if c.exponential_decay_length_penalty is not None and eos:
        start, factor = c.exponential_decay_length_penalty
        pre.append(("exponential_decay_length_penalty", {"start_index": start, "decay_factor": factor,
                                                         "prompt_length": prompt_length, "eos_token_id": eos}))
    if c.suppress_tokens is not None:
        pre.append(("suppress_tokens", {"tokens": c.suppress_tokens}))
    if c.begin_suppress_tokens is not None:
        begin = prompt_length if (prompt_length > 1 or c.forced_bos_token_id is None) else prompt_length + 1
        pre.append(("begin_suppress_tokens", {"tokens": c.begin_suppress_tokens, "begin_index": begin}))
    warp = []
    if c.do_sample:
        keep = max(len(eos), 1) + 1 if c.num_beams > 1 else 1  # HF: beams keep a non-eos token
        if c.temperature != 1.0:
            warp.append(("temperature", {"t": c.temperature}))
        if c.top_k:
            warp.append(("top_k", {"k": c.top_k, "min_tokens_to_keep": keep}))
        if c.top_p < 1.0:
            warp.append(("top_p", {"p": c.top_p, "min_tokens_to_keep": keep}))
        if c.min_p is not None:
            warp.append(("min_p", {"p": c.min_p, "min_tokens_to_keep": keep}))
        if c.typical_p < 1.0:
            warp.append(("typical", {"mass": c.typical_p, "min_tokens_to_keep": keep}))
        if 0.0 < c.epsilon_cutoff < 1.0:
            warp.append(("epsilon", {"eps": c.epsilon_cutoff, "min_tokens_to_keep": keep}))
        if 0.0 < c.eta_cutoff < 1.0:
            warp.append(("eta", {"eps": c.eta_cutoff, "min_tokens_to_keep": keep}))
    return sampling.chain(pre, table=table), sampling.chain(warp, table=table)


# ----------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class Plan:
    """What a decoder's generate runs, resolved from its arguments (`plan`)."""

    max_new_tokens: int
    processors: tuple
    sample: bool
    eos_token_id: tuple
    pad_token_id: int | None
    stop_sequences: tuple
    num_return_sequences: int
    num_beams: int
    length_penalty: float
    early_stopping: object

    def decode_kwargs(self) -> dict:
        """The keyword arguments of `decode` (and fast.generation.decode) this plan implies."""
        return {"processors": self.processors, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
                "stop_sequences": self.stop_sequences}

    def without_beams(self, where: str) -> "Plan":
        """self, or ValueError naming generation_config.num_beams for a decoder without beam search."""
        if self.num_beams > 1:
            raise ValueError(f"generation_config.num_beams: {where} has no beam search; expected 1, got {self.num_beams}")
        return self


def plan(config: GenerationConfig | None, prompt_length: int, vocab_size: int, max_new_tokens=None,
         processors=(), u=None, table=None) -> Plan:  # fmt: skip
    """Resolve a decoder's generate arguments into a `Plan` (ValueError naming the argument).

    Without a generation_config: max_new_tokens is required, u decides greedy (None) or
    sampling, processors are used as given, no eos. With one: max_new_tokens (argument, else
    config.max_new_tokens, else config.max_length - T0, as HF), do_sample needs u and greedy
    refuses it, and the processors are `logits_processors`' with the user's in between.
    """
    if config is not None and not isinstance(config, GenerationConfig):
        raise ValueError(f"generation_config: expected a GenerationConfig (GenerationConfig.from_dict "
                         f"for a HF dict), got {type(config).__name__}")
    if config is None:
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=u is not None, top_k=None)
        if max_new_tokens is None:
            raise ValueError("max_new_tokens: expected an int >= 0 (or a generation_config), got None")
    if max_new_tokens is None:
        max_new_tokens = config.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = max(config.max_length - prompt_length, 0)
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if config.do_sample and u is None:
        raise ValueError("u: do_sample=True needs uniforms u (explicit randomness), got None")
    if not config.do_sample and u is not None:
        raise ValueError("u: greedy or beam search (do_sample=False) takes no uniforms")
    eos = check_token_ids(config.eos_token_id, vocab_size, "eos_token_id")
    pad = check_pad(config.pad_token_id, eos, vocab_size)
    stops = check_stop_sequences(config.stop_sequences, vocab_size)
    if config.forced_eos_token_id is not None:
        check_token_ids(config.forced_eos_token_id, vocab_size, "forced_eos_token_id")
    pre, warp = logits_processors(config, prompt_length, prompt_length + int(max_new_tokens), table)
    return Plan(int(max_new_tokens), tuple(pre) + tuple(processors) + tuple(warp), config.do_sample, eos, pad,
                stops, config.num_return_sequences, config.num_beams, config.length_penalty, config.early_stopping)


def run_plan(run: Plan, prompt, mask, u, prefill, step):
    """The rest of a decoder's `generate` once `plan` has run (beam search aside): each prompt row
    repeated num_return_sequences times in place (as HF's repeat_interleave), the uniforms
    checked, the prompt prefilled, then `decode`.

    prompt: (B, T0) int, checked; mask: None or (B, T0) bool, checked; u: None or (B*R, N);
    prefill(prompt, mask) -> (the logits after each row's last real token (B, V), cache);
    step(cache, tokens (B,)) -> (logits (B, V), cache). Returns (B*R, T0 + n) int64.
    """
    xp = namespace(prompt)
    prompt = xp.asarray(prompt).astype(xp.int64)
    if run.num_return_sequences > 1:
        prompt = xp.repeat(prompt, run.num_return_sequences, axis=0)
        mask = None if mask is None else xp.repeat(mask, run.num_return_sequences, axis=0)
    N = run.max_new_tokens
    u = sampling.check_uniforms(u, (prompt.shape[0], N), xp)
    if N == 0:
        return prompt
    logits, cache = prefill(prompt, mask)
    new = decode(logits, cache, step, prompt, N, u=u, **run.decode_kwargs())
    return xp.concatenate([prompt, new], axis=1)  # (B*R, T0 + n)
