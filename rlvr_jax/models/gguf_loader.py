"""Load llama.cpp GGUF files (Llama, Qwen2, Qwen3 architectures) through the `gguf` package.

Each tensor is dequantised to float32 (`gguf.quants.dequantize`; F32/F16/BF16 and the Q*,
K-quant and IQ families it implements), renamed to its HF name and brought into HF layout,
then handed to the shared `hf_layout.assemble_params`. llama.cpp's converter permutes the
rows of Llama q/k projections so that its interleaved-pair RoPE matches HF's rotate-half
RoPE: within each head the rows (r₀ … r_{d/2-1}, r_{d/2} … r_{d-1}) are stored interleaved as
(r₀, r_{d/2}, r₁, r_{d/2+1}, …). We apply the inverse. Qwen2/Qwen3 use the rotate-half
("neox") layout in llama.cpp and are stored unpermuted.
"""

from __future__ import annotations

import os
import re
from typing import Any

import gguf
import numpy as np

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.hf_layout import assemble_params
from rlvr_jax.models.model import Params

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(.+)")


def hf_name(gguf_name: str) -> str | None:
    """The HF tensor name of a GGUF tensor name, or None if it has no counterpart."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_PATTERN.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def gguf_name(hf_tensor_name: str) -> str:
    """The GGUF tensor name of an HF tensor name (inverse of `hf_name`)."""
    for gguf_global, hf_global in _GLOBAL_NAMES.items():
        if hf_global == hf_tensor_name:
            return gguf_global
    _, _, layer, suffix = hf_tensor_name.split(".", 3)
    inverse = {hf: gguf for gguf, hf in _LAYER_NAMES.items()}
    return f"blk.{layer}.{inverse[suffix]}"


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. weight [num_heads * d, in] -> same shape."""
    rows = weight.shape[0]
    half = rows // num_heads // 2
    return (weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


class GGUFFile:
    """Metadata and tensors of one GGUF file, with errors that name the file and tensor."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file not found: {path}")
        self.path = path
        try:
            self.reader = gguf.GGUFReader(path)
        except Exception as e:  # the reader raises bare ValueError/IndexError on bad bytes
            raise ValueError(f"{path}: not a readable GGUF file (truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from e
        self.tensors = {t.name: t for t in self.reader.tensors}

    def field(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> Any:
        value = self.field(key)
        if value is None:
            raise ValueError(f"{self.path}: GGUF metadata lacks {key!r}")
        return value

    def dequantized(self, name: str) -> np.ndarray:
        """Tensor `name` as float32 in NumPy (row-major, HF [out, in]) layout."""
        tensor = self.tensors[name]
        qtype = tensor.tensor_type
        try:
            array = gguf.quants.dequantize(tensor.data, qtype)
        except NotImplementedError as e:
            raise ValueError(
                f"{self.path}: tensor {name!r} uses quantisation {qtype.name}, which cannot be "
                f"dequantised (supported: F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, K- and IQ-quants)"
            ) from e
        expected = tuple(int(d) for d in reversed(tensor.shape))
        if array.shape != expected:
            raise ValueError(f"{self.path}: tensor {name!r} holds {array.shape} values, "
                             f"header says {expected} (truncated file?)")
        return np.asarray(array, np.float32)


def config_from_gguf(file: GGUFFile, **overrides: Any) -> ModelConfig:
    """`ModelConfig` from GGUF metadata (`{arch}.block_count`, `…head_count`, …)."""
    arch = file.require("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{file.path}: unknown architecture {arch!r}; supported GGUF "
                         f"architectures are {SUPPORTED_ARCHITECTURES}")
    if "rope_freqs.weight" in file.tensors:
        raise ValueError(f"{file.path}: tensor 'rope_freqs.weight' (per-frequency RoPE "
                         f"factors, Llama 3.1 GGUF) is not supported; load the HF checkpoint")
    scaling = file.field(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ValueError(f"{file.path}: unsupported RoPE scaling {scaling!r}")
    hidden = int(file.require(f"{arch}.embedding_length"))
    heads = int(file.require(f"{arch}.attention.head_count"))
    tokens = file.field("tokenizer.ggml.tokens")
    vocab = file.field(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    if vocab is None:
        vocab = int(file.tensors["token_embd.weight"].shape[-1])
    eos = file.field("tokenizer.ggml.eos_token_id")
    fields: dict[str, Any] = dict(
        family=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        num_layers=int(file.require(f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=int(file.field(f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(file.field(f"{arch}.attention.key_length", hidden // heads)),
        mlp_dim=int(file.require(f"{arch}.feed_forward_length")),
        rope_theta=float(file.field(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(file.field(f"{arch}.context_length", 4096)),
        norm_eps=float(file.require(f"{arch}.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in file.tensors,
        qkv_bias=arch == "qwen2",
        qk_norm=arch == "qwen3",
        bos_token_id=file.field("tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
    )
    if scaling == "linear":
        fields.update(rope_type="linear",
                      rope_factor=float(file.require(f"{arch}.rope.scaling.factor")))
    fields.update(overrides)
    return ModelConfig(**fields)


def load_gguf(
    path: str, *, dtype: Any, param_dtype: Any, shardings: Params | None = None
) -> tuple[ModelConfig, Params]:
    """(config, params) from a GGUF file, dequantised into `param_dtype`."""
    file = GGUFFile(path)
    config = config_from_gguf(file, dtype=dtype, param_dtype=param_dtype)
    by_hf_name = {}
    for name in file.tensors:
        target = hf_name(name)
        if target is None:
            raise ValueError(f"{path}: tensor {name!r} has no counterpart in a "
                             f"{config.family} model")
        by_hf_name[target] = name
    permuted = {"self_attn.q_proj.weight": config.num_heads,
                "self_attn.k_proj.weight": config.num_kv_heads}

    def get(name: str, hf_shape: tuple[int, ...]) -> np.ndarray:
        if name not in by_hf_name:
            raise KeyError(f"{path}: missing tensor {gguf_name(name)!r} (HF name {name!r})")
        array = file.dequantized(by_hf_name[name])
        if array.shape != hf_shape:
            raise ValueError(f"{path}: tensor {by_hf_name[name]!r} has shape {array.shape}, "
                             f"the metadata implies {hf_shape}")
        suffix = name.split(".", 3)[-1]
        if config.family == "llama" and suffix in permuted:
            array = unpermute_rows(array, permuted[suffix])
        return array

    return config, assemble_params(config, get, shardings)
