"""`ModelConfig`: the architecture of a decoder-only transformer plus its dtype policy.

One frozen, hashable dataclass describes every family this package runs (Llama, Qwen2/2.5,
Qwen3). Being hashable it can be a static argument of `jax.jit`. It converts to and from the
Hugging Face `config.json` dictionary so checkpoints round-trip through `transformers`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

Family = Literal["llama", "qwen2", "qwen3"]
Remat = Literal["none", "full", "dots_saveable"]
AttentionImpl = Literal["einsum", "xla", "cudnn"]

FAMILIES: tuple[str, ...] = ("llama", "qwen2", "qwen3")
REMAT_POLICIES: tuple[str, ...] = ("none", "full", "dots_saveable")
ATTENTION_IMPLS: tuple[str, ...] = ("einsum", "xla", "cudnn")
# cuDNN's fused attention kernels take half-precision inputs only.
CUDNN_DTYPES: tuple[str, ...] = ("bfloat16", "float16")
ROPE_TYPES: tuple[str, ...] = ("default", "linear", "llama3")

_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a decoder-only transformer.

    Attention is grouped-query: `num_heads` query heads share `num_kv_heads` key/value heads
    (`num_heads % num_kv_heads == 0`). Family differences are flags: `qkv_bias` (Qwen2 adds
    biases to the q/k/v projections), `qk_norm` (Qwen3 RMS-normalises every query and key head
    over `head_dim` before RoPE). RoPE uses the rotate-half layout of Hugging Face checkpoints
    with inverse frequencies θ^(-2i/head_dim); `rope_type="llama3"` rescales them as Llama 3.1
    does (`rope_factor`, `rope_low_freq_factor`, `rope_high_freq_factor`,
    `rope_original_max_position`), `rope_type="linear"` divides positions by `rope_factor`.

    `dtype` is the compute dtype of activations and matmuls, `param_dtype` the storage dtype
    of parameters. Norm statistics, softmax and logits are always computed in float32.
    `remat_policy` chooses what each layer keeps for the backward pass: "none" keeps all
    activations, "full" recomputes the layer, "dots_saveable" keeps matmul outputs only.

    `attention_impl` chooses how attention without a cache (training, scoring) and the cached
    prefill of a prompt are computed; one-token decode steps always use the einsum path.
    "einsum": the model's own masked einsum and float32 softmax (any backend). "xla" and
    "cudnn": `jax.nn.dot_product_attention` with that `implementation`; "cudnn" is cuDNN's
    fused (flash) attention, GPU only, `dtype` bfloat16 or float16. All three compute the same
    function (see `transformer.Attention`).
    """

    family: Family
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    max_position_embeddings: int = 4096
    norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: Remat = "none"
    attention_impl: AttentionImpl = "einsum"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family={self.family!r}; expected one of {FAMILIES}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"ModelConfig.remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"ModelConfig.attention_impl={self.attention_impl!r}; expected one "
                             f"of {ATTENTION_IMPLS}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"ModelConfig.rope_type={self.rope_type!r}; expected {ROPE_TYPES}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        # Canonicalise dtypes so equal configs hash equal (jnp.float32 vs np.dtype('float32')).
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
        if self.attention_impl == "cudnn" and self.dtype.name not in CUDNN_DTYPES:
            raise ValueError(
                f"ModelConfig.attention_impl='cudnn' needs dtype in {CUDNN_DTYPES} (cuDNN's fused "
                f"attention takes half-precision inputs), got dtype={self.dtype.name}; use "
                "attention_impl='xla' or 'einsum' for float32"
            )

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (e.g. `config.replace(dtype=jnp.bfloat16)`)."""
        return dataclasses.replace(self, **changes)

    @property
    def params_per_layer(self) -> int:
        """Parameters of one decoder layer: projections, q/k/v biases, q/k norms, two norms."""
        D, F, H, K, Dh = (self.hidden_size, self.mlp_dim, self.num_heads, self.num_kv_heads,
                          self.head_dim)
        attention = D * H * Dh * 2 + D * K * Dh * 2
        if self.qkv_bias:
            attention += (H + 2 * K) * Dh
        if self.qk_norm:
            attention += 2 * Dh
        return attention + 3 * D * F + 2 * D

    @property
    def num_params(self) -> int:
        """Number of parameters (embedding counted once when tied)."""
        D = self.hidden_size
        head = 0 if self.tie_word_embeddings else self.vocab_size * D
        return self.vocab_size * D + self.num_layers * self.params_per_layer + D + head


def _rope_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE fields from either `rope_scaling` (transformers 4) or `rope_parameters` (5)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    params.update({k: v for k, v in scaling.items() if k not in params})
    theta = params.get("rope_theta") or hf.get("rope_theta") or 10000.0
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rope_type!r} in config; supported: {ROPE_TYPES}")
    fields: dict[str, Any] = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        fields["rope_factor"] = float(params["factor"])
    if rope_type == "llama3":
        fields["rope_low_freq_factor"] = float(params["low_freq_factor"])
        fields["rope_high_freq_factor"] = float(params["high_freq_factor"])
        fields["rope_original_max_position"] = int(params["original_max_position_embeddings"])
    return fields


def _family_from_hf(hf: dict[str, Any]) -> Family:
    model_type = hf.get("model_type")
    if model_type in FAMILIES:
        return model_type
    architectures = hf.get("architectures") or []
    for family, architecture in _HF_ARCHITECTURES.items():
        if architecture in architectures:
            return family  # type: ignore[return-value]
    raise ValueError(
        f"unknown architecture: model_type={model_type!r}, architectures={architectures}; "
        f"supported model_type values are {FAMILIES}"
    )


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Build a `ModelConfig` from a Hugging Face `config.json` dictionary.

    Raises ValueError naming the problem for unknown architectures or unsupported options.
    """
    family = _family_from_hf(hf)
    num_heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    eos = hf.get("eos_token_id")
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
    if family != "qwen2" and hf.get("attention_bias"):
        raise ValueError(f"unsupported option attention_bias=True for model_type={family!r}")
    fields: dict[str, Any] = dict(
        family=family,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hidden // num_heads),
        mlp_dim=int(hf["intermediate_size"]),
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids,
        **_rope_from_hf(hf),
    )
    if hf.get("use_sliding_window"):
        raise ValueError("unsupported option use_sliding_window=True in config")
    if hf.get("mlp_bias"):
        raise ValueError("unsupported option mlp_bias=True in config")
    hidden_act = hf.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise ValueError(f"unsupported hidden_act={hidden_act!r}; only 'silu' (SwiGLU)")
    fields.update(overrides)
    return ModelConfig(**fields)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The Hugging Face `config.json` dictionary that `transformers` loads for this config."""
    rope: dict[str, Any] = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
    if config.rope_type in ("linear", "llama3"):
        rope["factor"] = config.rope_factor
    if config.rope_type == "llama3":
        rope.update(
            low_freq_factor=config.rope_low_freq_factor,
            high_freq_factor=config.rope_high_freq_factor,
            original_max_position_embeddings=config.rope_original_max_position,
        )
    hf: dict[str, Any] = {
        "architectures": [_HF_ARCHITECTURES[config.family]],
        "model_type": config.family,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_theta": config.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": None if config.rope_type == "default" else rope,
        "torch_dtype": "bfloat16" if config.param_dtype == jnp.bfloat16 else "float32",
        "use_cache": True,
    }
    if config.family != "qwen2":
        hf.update(attention_bias=False)
    if config.bos_token_id is not None:
        hf["bos_token_id"] = config.bos_token_id
    if config.eos_token_ids:
        ids = list(config.eos_token_ids)
        hf["eos_token_id"] = ids[0] if len(ids) == 1 else ids
    return hf
