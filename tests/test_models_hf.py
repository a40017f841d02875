"""Logits parity with transformers' PyTorch models, save_hf round trips, loader errors."""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlvr_jax import models

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def _hf_config(family: str) -> transformers.PretrainedConfig:
    if family == "llama":
        return transformers.LlamaConfig(
            **TINY, rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16},
        )
    if family == "qwen2":
        return transformers.Qwen2Config(**TINY, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "default",
                                                         "rope_theta": 1e6})
    return transformers.Qwen3Config(**TINY, head_dim=16, rms_norm_eps=1e-6,
                                    tie_word_embeddings=False,
                                    rope_parameters={"rope_type": "default",
                                                     "rope_theta": 1e6})


def _random_hf_model(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny HF model whose every weight (biases, norms included) is random."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_hf_config(family),
                                                           dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def _hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
    return out.logits.numpy()


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def saved_family(request, tmp_path_factory):
    family = request.param
    model = _random_hf_model(family)
    directory = str(tmp_path_factory.mktemp(family))
    model.save_pretrained(directory)
    return family, model, directory


TOKENS = np.array([[5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 12, 50],
                   [0, 0, 0, 0, 44, 8, 90, 91, 1, 6, 77, 23]], np.int64)
MASK = np.array([[1] * 12, [0] * 4 + [1] * 8], np.int64)


def test_logits_match_transformers(saved_family):
    family, hf_model, directory = saved_family
    config, params = models.load(directory)
    assert config.family == family
    ours = np.asarray(models.forward(config, params, jnp.asarray(TOKENS, jnp.int32),
                                     attention_mask=jnp.asarray(MASK)))
    ref = _hf_logits(hf_model, TOKENS, MASK)
    real = MASK.astype(bool)  # HF's outputs at padding positions are unspecified
    np.testing.assert_array_less(np.abs(ours - ref)[real].max(), 1e-4)


def test_save_hf_round_trip(saved_family, tmp_path):
    _, hf_model, directory = saved_family
    config, params = models.load(directory)
    out = str(tmp_path / "exported")
    models.save_hf(config, params, out)
    reloaded_hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    np.testing.assert_allclose(_hf_logits(reloaded_hf, TOKENS, MASK),
                               _hf_logits(hf_model, TOKENS, MASK), atol=1e-6, rtol=0)
    config2, params2 = models.load(out)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_sharded_checkpoint_with_index(saved_family, tmp_path):
    _, hf_model, _ = saved_family
    out = str(tmp_path / "sharded")
    hf_model.save_pretrained(out, max_shard_size="20KB")
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    config, params = models.load(out)
    ours = np.asarray(models.forward(config, params, jnp.asarray(TOKENS[:1], jnp.int32)))
    np.testing.assert_array_less(np.abs(ours - _hf_logits(hf_model, TOKENS[:1],
                                                          MASK[:1])).max(), 1e-4)


def test_save_hf_writes_shards_that_load_back(tmp_path):
    config = models.PRESETS["smollm2-135m-instruct"].replace(num_layers=2, vocab_size=64)
    params = models.init_params(config, jax.random.key(1))
    models.save_hf(config, params, str(tmp_path), max_shard_bytes=200_000)
    with open(tmp_path / "model.safetensors.index.json") as f:
        files = set(json.load(f)["weight_map"].values())
    assert len(files) > 1
    _, loaded = models.load(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_bfloat16_params_and_compute(saved_family):
    _, hf_model, directory = saved_family
    config, params = models.load(directory, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    logits = models.forward(config, params, jnp.asarray(TOKENS[:1], jnp.int32))
    assert logits.dtype == jnp.float32
    ref = _hf_logits(hf_model, TOKENS[:1], MASK[:1])
    assert np.abs(np.asarray(logits) - ref).max() < 0.1 * np.abs(ref).max()


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    config = models.ModelConfig(family="qwen2", vocab_size=32, hidden_size=16, num_layers=2,
                                num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=24,
                                qkv_bias=True)
    directory = tmp_path / "ckpt"
    models.save_hf(config, models.init_params(config, jax.random.key(0)), str(directory))
    return directory


def _edit_config(directory, **changes):
    path = directory / "config.json"
    hf = json.loads(path.read_text())
    hf.update(changes)
    path.write_text(json.dumps(hf))


def test_missing_and_truncated_files(tiny_checkpoint):
    weights = tiny_checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated file: tensor '.*'"):
        models.load(str(tiny_checkpoint))
    weights.write_bytes(data[:5])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated"):
        models.load(str(tiny_checkpoint))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors files"):
        models.load(str(tiny_checkpoint))
    (tiny_checkpoint / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        models.load(str(tiny_checkpoint))


def test_shape_mismatch_names_file_and_tensor(tiny_checkpoint):
    _edit_config(tiny_checkpoint, intermediate_size=32)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor "
                                         r"'model\.layers\.0\.mlp\.down_proj\.weight' has shape "
                                         r"\(16, 24\), config\.json implies \(16, 32\)"):
        models.load(str(tiny_checkpoint))


def test_unknown_architecture_and_tensor_mismatches(tiny_checkpoint):
    _edit_config(tiny_checkpoint, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match=r"config\.json: unknown architecture.*'gpt2'"):
        models.load(str(tiny_checkpoint))
    _edit_config(tiny_checkpoint, model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(ValueError, match=r"does not use \(architecture mismatch\?\).*q_proj\.bias"):
        models.load(str(tiny_checkpoint))
    _edit_config(tiny_checkpoint, model_type="qwen2", num_hidden_layers=3)
    with pytest.raises(KeyError, match=r"missing tensor 'model\.layers\.2\."):
        models.load(str(tiny_checkpoint))


def test_unknown_names_and_presets_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing path nor a preset"):
        models.load("no-such-model")
    with pytest.raises(ValueError, match="has no bundled weights"):
        models.load("qwen2.5-7b")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"not an HF checkpoint directory or a \.gguf file"):
        models.load(str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_preset_configs_survive_transformers(name):
    """Each preset, as config.json, is read by transformers with the same architecture."""
    preset = models.PRESETS[name]
    hf_dict = models.config_to_hf(preset)
    assert models.config_from_hf(hf_dict) == preset
    hf = transformers.AutoConfig.for_model(**hf_dict)
    assert (hf.hidden_size, hf.num_hidden_layers, hf.num_key_value_heads, hf.head_dim,
            hf.intermediate_size, hf.vocab_size, hf.tie_word_embeddings) == (
        preset.hidden_size, preset.num_layers, preset.num_kv_heads, preset.head_dim,
        preset.mlp_dim, preset.vocab_size, preset.tie_word_embeddings)
    assert hf.rope_parameters["rope_theta"] == preset.rope_theta
    assert hf.rope_parameters["rope_type"] == preset.rope_type


def test_unsupported_config_options_are_rejected():
    base = models.config_to_hf(models.PRESETS["qwen2.5-0.5b"])
    for change, message in [
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}},
         "unsupported rope_type 'yarn'"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"model_type": "llama", "attention_bias": True}, "attention_bias=True"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            models.config_from_hf({**base, **change})
