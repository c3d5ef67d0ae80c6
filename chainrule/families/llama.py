"""LLaMA-family HF directories for `chainrule check` (chainrule.check's registry): one family.

    hf-llama   a HF transformers Llama, Mistral or Qwen2 directory: config.json with model_type
               "llama", "mistral" or "qwen2", and the weights as model.safetensors (or the shards
               model.safetensors.index.json lists; never a pickle). The model under test is
               transformers' LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM
               (AutoModelForCausalLM) loaded from the directory in the dtype and on the device
               asked for; the reference is reference.llama on the same weights (reference.llama.from_hf).
               An option the spec does not implement (attention_bias, mlp_bias, another hidden_act,
               pretraining_tp > 1, yarn or dynamic RoPE, Qwen2's use_sliding_window) is a usage error
               naming it.

The naive same-dtype baseline of the low-precision rule: float32 and float16 run the reference
itself in that NumPy dtype; bfloat16, which NumPy lacks, runs fast.llama's unfused attention
(attn_impl="math") in bfloat16 on the model's device. The padded batches run as HF's generate runs
them (the attention mask and the position ids derived from it), through the same functions as the
hf-gpt2 family (chainrule.families.gpt2). Rotary positions make attention depend on i - j only, so
HF's forward given the mask alone (positions counted over the pads) is padding invariant here too,
unlike GPT-2's: the padding line says so. In float64, transformers still computes the RMSNorm and
the RoPE angles in float32 (as of 5.x), about 1e-6 from the float64 truth: a note says so, and the
float64 logits check then fails, rightly.
"""

from __future__ import annotations

from pathlib import Path

from chainrule import check as C
from chainrule.families import hf  # the helpers of the families that read HF directories
from chainrule.reference import checks
from chainrule.reference import llama as ref_llama

FLOAT64_NOTE = "transformers runs RMSNorm and RoPE in float32 even in float64: expect errors ~1e-6"


class LlamaSubject(C.Subject):
    """chainrule.check.Subject whose context is the config's max_position (LLaMA's name for it)."""

    @property
    def context(self) -> int:
        return int(self.config.max_position)


def detect(path: Path) -> bool:
    return hf.json_field(path / "config.json", "model_type") in ref_llama.MODEL_TYPES


def _describe(config) -> str:
    heads = f"H{config.n_head}" + (f"/{config.n_kv_head}kv" if config.n_kv_head != config.n_head else "")
    extra = (f" W{config.sliding_window}" if config.sliding_window else "") + (
        f" rope {config.rope_scaling['rope_type']}" if config.rope_scaling else "")
    return f"L{config.n_layer} {heads} C{config.n_embd} V{config.vocab_size} T{config.max_position}{extra}"


def load(path: Path, *, dtype: str | None, device: str, bos_token: int | None, patch=None) -> C.Subject:
    """The Subject of a HF Llama / Mistral / Qwen2 directory: the transformers model from it (in
    `dtype`, default the config's, on `device`) under test; reference.llama on the safetensors
    weights. patch: a function model -> model applied to the loaded model (as hf-gpt2's)."""
    transformers = hf.import_transformers()
    from safetensors.torch import load_file

    raw = hf.read_json(path / "config.json")
    files = hf.weight_files(path)
    if dtype is None:
        saved = raw.get("dtype", raw.get("torch_dtype"))
        dtype = saved if saved in C.DTYPES else "float32"
    with hf.quiet_transformers(transformers):
        hf_config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True).to_dict()
    notes = [FLOAT64_NOTE] if dtype == "float64" else []
    bos = hf.hf_bos(hf_config, bos_token, notes)
    try:
        ref_llama.config_from_hf(hf_config, bos)  # refuse an unsupported option before reading the weights
    except ValueError as error:
        raise C.CheckError(f"PATH: {path / 'config.json'}: {error}") from None
    state = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as error:  # a corrupt or truncated file: name it
            raise C.CheckError(f"PATH: {file} is not a readable safetensors file ({error})") from None
    params, config = ref_llama.from_hf(state, hf_config, bos_token=bos)
    del state
    with hf.quiet_transformers(transformers):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), use_safetensors=True, local_files_only=True, dtype=hf.torch_dtype(dtype))
    want = ref_llama.MODEL_TYPES[hf_config["model_type"]]
    if type(model).__name__ != want:
        raise C.CheckError(f"PATH: transformers loaded {type(model).__name__} from {path}, expected {want}")
    model = model.to(device).eval()
    if patch is not None:
        model = patch(model)
    got = next(model.parameters()).dtype
    if got != hf.torch_dtype(dtype):
        raise C.CheckError(f"--dtype {dtype}: transformers loaded the model in {got}")
    attn = getattr(model.config, "_attn_implementation", None) or "default"
    description = f"transformers {transformers.__version__} {want} ({attn} attention), {_describe(config)}"
    naive_logits, naive_log_prob, naive_text = hf.naive_baseline(ref_llama, "llama", params, dtype, device)
    *functions, padded_logits, padded_note = hf.hf_functions(model, config, dtype, device)
    return LlamaSubject("hf-llama", description, dtype, device, ref_llama, params, config, *functions,
                   naive_logits=naive_logits, naive_log_prob=naive_log_prob, naive_description=naive_text,
                   notes=notes, padded_logits=padded_logits, padded_note=padded_note)  # fmt: skip


C.register_family("hf-llama", "HF transformers Llama, Mistral or Qwen2: config.json model_type 'llama', 'mistral' "
                              "or 'qwen2' + model.safetensors", detect, load)  # fmt: skip
