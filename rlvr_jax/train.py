"""The main job: RL with verifiable rewards, from a recipe config to a trained policy.

    python -m rlvr_jax.train --config=configs/<recipe>.py[:variant] --config.<key>=<value> \\
        --workdir=<dir>

Each step: draw prompts, sample groups of completions, verify them, compute advantages with
the configured estimator, update the policy in one compiled step; evaluate every
``eval.every_steps`` steps on held-out prompts; log (``<workdir>/metrics.jsonl``, TensorBoard,
optionally wandb) and checkpoint (``<workdir>/checkpoints``). Starting again with the same
workdir resumes from the latest checkpoint exactly (parameters, optimizer, PRNG keys and the
prompt stream position); SIGTERM/SIGINT save a checkpoint at the next step boundary and exit.
On the same command on every host of a TPU pod or GPU cluster it runs multi-controller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from rlvr_jax import (
    checkpoint,
    compile_events,
    evaluation,
    logprobs,
    metric_writer,
    models,
    prompt_stream,
    rollout,
    sharding,
    tasks,
    workdir_guard,
)
from rlvr_jax import config as config_lib
from rlvr_jax import optimizer as optimizer_lib
from rlvr_jax import train_step as train_step_lib
from rlvr_jax.tasks import splits


def _sample_texts(groups: rollout.Groups, count: int) -> dict[str, str]:
    texts = {}
    for i in range(min(count, len(groups.examples))):
        example = groups.examples[i]
        texts[f"samples/{i}"] = (
            f"QUESTION: {example['question']}\nREFERENCE: {example['answer']}\n"
            f"REWARD: {groups.rewards[i, 0]:.0f}\nCOMPLETION: {groups.texts[i][0]}"
        )
    return texts


def _stream_position(host_state: dict[str, Any]) -> int:
    """The prompt stream's position in a checkpoint's host state; ValueError if it is none."""
    position = host_state["stream_position"]
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"stream_position={position!r} is not a non-negative integer")
    return position


def held_out_report(eval_examples: list[dict[str, Any]], task: tasks.Task,
                    config: Any) -> splits.OverlapReport:
    """Compares the evaluation prompts with the training split (printed on stderr); raises
    ValueError when some occur in it, unless ``eval.allow_train_overlap``: pass@k on training
    questions measures recall, not generalisation, so a comparison must opt in to it."""
    report = splits.overlap_report(eval_examples, task, config.task.train_split)
    if report.in_train and not config.eval.allow_train_overlap:
        raise ValueError(f"{report}: the evaluation would not be held out; choose an eval task "
                         "or split without training questions, or set "
                         "eval.allow_train_overlap=True to evaluate on them anyway")
    if jax.process_index() == 0:
        print(report if not report.in_train else f"WARNING: {report}", file=sys.stderr)
    return report


def use_compilation_cache(directory: str) -> None:
    """Turns on JAX's persistent compilation cache in ``directory`` (``~`` expanded), unless it
    is empty or the process chose a cache already (a study's, ``JAX_COMPILATION_CACHE_DIR``):
    compiled programs are then read from disk instead of compiled again."""
    if directory and jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))


def run(config: Any, workdir: str, *, model_store: models.ModelStore | None = None,
        progress: tqdm | None = None) -> dict[str, float]:
    """Trains with ``config`` in ``workdir`` (resuming if it holds a checkpoint).

    ``model_store`` keeps loaded weights and tokenizers for later runs of the same process;
    ``progress``, a progress bar the caller owns (a study's over all its runs), is advanced
    once per step instead of the run's own bar. Returns the metrics of the last step and of
    the final evaluation.
    """
    config_lib.validate(config)
    use_compilation_cache(config.compilation_cache)
    tx, schedule = optimizer_lib.make_optimizer(
        optimizer_lib.updates_per_rl_step(config.batching), **config.optim)
    sharding.initialize_distributed()
    config_lib.validate_devices(config, jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    workdir_guard.check_usable(workdir, os.path.join(workdir, "checkpoints"))
    main_process = jax.process_index() == 0
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.rules_from_config(config.sharding)
    task = tasks.get(config.task.name, **config.task.options.to_dict())
    eval_task = task
    if config.eval.task:
        eval_task = tasks.get(config.eval.task, **config.eval.task_options.to_dict())
    eval_examples = eval_task.examples(config.task.eval_split, seed=config.eval.seed,
                                       n=config.eval.num_prompts)
    overlap = held_out_report(eval_examples, task, config)  # before anything heavy loads

    store = model_store or models.ModelStore()
    model_config, params = store.weights(
        config.model.name, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
        cache_dir=config.model.cache_dir)
    model_config = model_config.replace(remat_policy=config.model.remat_policy,
                                        attention_impl=config.model.attention_impl)
    tokenizer = store.tokenizer(config.model.tokenizer or config.model.name,
                                cache_dir=config.model.cache_dir)
    eos_ids = model_config.eos_token_ids or (tokenizer.eos_token_id,)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    state, shardings = train_step_lib.create_train_state(
        model_config, tx, jax.random.key(config.seed), mesh, rules, params=params)
    reference = None
    if config.loss.kl_coef:
        reference = jax.tree.map(jnp.copy, state.params)  # frozen: never donated
    del params, store  # a store made here would keep the loaded weights beside the state's
    step_fn = train_step_lib.make_train_step(config, model_config, tx, mesh, rules, shardings)
    reference_fn = None
    if reference is not None:
        reference_fn = logprobs.make_logprob_fn(model_config, mesh, rules, shardings.params,
                                                chunk_size=config.batching.logprob_chunk_size)
    sampler = rollout.Sampler(
        model_config, tokenizer, task, max_prompt_len=config.rollout.max_prompt_len,
        prompt_bucket=config.rollout.prompt_bucket, length_bucket=config.rollout.length_bucket,
        eos_ids=tuple(int(i) for i in eos_ids), pad_id=int(pad_id),
        unstack_layers=config.rollout.unstack_decode_layers, mesh_and_rules=(mesh, rules),
    )
    stream = rollout.PromptStream(task, config.task.train_split, config.seed)
    eval_sampler = dataclasses.replace(sampler, task=eval_task)
    eval_examples = prompt_stream.usable_examples(eval_examples, eval_sampler.prompt_problem,
                                                  "evaluation")
    eval_tokens = config.eval.max_new_tokens or config.rollout.max_new_tokens
    rollout_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    eval_key = jax.random.fold_in(jax.random.key(config.eval.seed), 2)

    def run_eval(step: int, log: metric_writer.MetricWriter) -> dict[str, float]:
        at_end = step in (0, config.total_steps)
        samples = config.eval.samples_per_prompt
        if at_end and config.eval.samples_per_prompt_at_ends is not None:
            samples = config.eval.samples_per_prompt_at_ends
        results, groups = evaluation.evaluate(
            eval_sampler, state.params, eval_examples, eval_key, config.eval, eval_tokens,
            batch_prompts=config.rollout.prompts_per_step, num_samples=samples)
        scalars = {f"eval/{k}": v for k, v in results.items()}
        scalars["eval/prompts_in_train"] = float(overlap.in_train)
        log.scalars(step, scalars)
        log.record(step, {"eval": evaluation.prompt_records(groups)})
        log.texts(step, {f"eval_{k}": v for k, v in _sample_texts(groups, 1).items()})
        return scalars

    total = config.total_steps
    plain_config = config.to_dict()  # written with every checkpoint and to config.json
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    last: dict[str, float] = {}
    with (
        compile_events.CompileCounter() as compiles,
        workdir_guard.exclusive(workdir),
        checkpoint.Checkpointer(
            ckpt_dir, save_every_steps=config.checkpoint.save_every_steps,
            keep_last=config.checkpoint.keep_last, async_save=config.checkpoint.async_save,
        ) as ckpt,
        checkpoint.PreemptionGuard(ckpt) as guard,
    ):
        start = 0
        if ckpt.latest_step() is not None:
            restored = ckpt.restore(jax.eval_shape(lambda: state), shardings,
                                    check_host=_stream_position)
            state, start = restored.state, restored.step
            stream.position = _stream_position(restored.host_state)
        with metric_writer.MetricWriter(
            workdir, plain_config, tensorboard=config.logging.tensorboard,
            wandb=config.logging.wandb, wandb_project=config.logging.wandb_project,
            is_main_process=main_process, resume_step=start if start else None,
        ) as log, (contextlib.nullcontext(progress) if progress is not None else tqdm(
            total=total, initial=start, unit="step", dynamic_ncols=True,
            disable=not main_process)) as bar:
            if start == 0 and config.eval.at_start:
                last.update(run_eval(0, log))
            if start == total and not evaluation.recorded(workdir, total):
                last.update(run_eval(total, log))  # stopped after the final save, before this
            for step in range(start, total):
                began = time.perf_counter()
                batch, stats, groups = rollout.collect(
                    sampler, stream, state.params, jax.random.fold_in(rollout_key, step),
                    config, reference_fn, reference)
                rollout_seconds = time.perf_counter() - began
                state, step_metrics, rollout_policy = step_fn(
                    state, sharding.place_batch(batch, mesh, rules))
                step_metrics = {k: float(v) for k, v in step_metrics.items()}
                stats |= rollout.policy_metrics(
                    groups, batch, {k: rollout.to_host(v) for k, v in rollout_policy.items()},
                    config)
                seconds = time.perf_counter() - began
                scalars = {"time/scoring_seconds": stats.pop("scoring_seconds")}
                scalars |= {f"train/{k}": v for k, v in stats.items()}
                scalars |= {f"update/{k}": v for k, v in step_metrics.items()}
                scalars |= {
                    "time/step_seconds": seconds, "time/rollout_seconds": rollout_seconds,
                    "time/generation_seconds": groups.generation_seconds,
                    "time/verification_seconds": groups.verification_seconds,
                    "time/update_seconds": seconds - rollout_seconds,
                    **{f"time/{k}": v for k, v in compiles.figures().items()},
                    "time/tokens_per_second": stats["tokens"] / seconds,
                    "update/learning_rate": float(schedule(step)),
                }
                log.scalars(step + 1, scalars)
                log.texts(step + 1, _sample_texts(groups, config.logging.num_sample_texts))
                last.update(scalars)
                stop = guard.should_stop(step + 1)
                ckpt.save(step + 1, state, {"stream_position": stream.position,
                                            "config": plain_config},
                          force=stop or step + 1 == total)  # before an evaluation can fail
                every = config.eval.every_steps
                if (every and (step + 1) % every == 0) or step + 1 == total:
                    last.update(run_eval(step + 1, log))
                bar.set_postfix({
                    "reward": stats["reward_mean"], "pass@1": last.get("eval/pass@1", 0.0),
                    "tok/s": scalars["time/tokens_per_second"]}, refresh=False)
                bar.update()
                if stop:
                    print(f"stopping at step {step + 1} on request; checkpoint saved",
                          file=sys.stderr)
                    break
    task.close()
    eval_task.close()
    return last


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; a ``--config.<key>`` override that names no key exits with
    ml_collections' own message (which suggests the closest key) instead of a traceback."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:
        overrides = [arg for arg in argv if arg.startswith("--config.")]
        while error.args and isinstance(error.args[0], BaseException):  # a wrapped KeyError
            error = error.args[0]
        missing, *rest = str(error.args[0] if error.args else error).split("\n")
        missing = missing.strip("\"'")
        message = "\n".join([missing, *rest])  # "<key>[\nDid you mean ...?]"
        if not rest and any(arg.startswith(f"--config.advantage.options.{missing}=")
                            for arg in overrides):
            message += ("\n(advantage.options holds the options of the recipe variant's "
                        "estimator; for another estimator's options choose it as the variant: "
                        "--config=configs/<recipe>.py:<variant>)")
        sys.exit(f"error: unknown config key in {' '.join(overrides)}: {message}")


def main() -> None:
    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Recipe: configs/<recipe>.py[:variant].", lock_config=True)
    workdir_flag = flags.DEFINE_string("workdir", None, "Run directory (logs, checkpoints).")
    flags.mark_flags_as_required(["config", "workdir"])

    def app_main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if not flags.FLAGS["verbosity"].present:  # orbax and JAX log every save at INFO
            absl_logging.set_verbosity(absl_logging.WARNING)
        run(config_flag.value, workdir_flag.value)

    app.run(app_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
