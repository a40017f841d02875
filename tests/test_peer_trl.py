"""The peer benchmark's parent (benchmarks/peer_trl.py) on fake workers: alternation, medians,
the probe check, failures, the result file; and the workers' pure pieces. No TRL needed: the
real pairing is a measurement, run by hand."""

import importlib.util
import json
import statistics
import sys
import textwrap

import pytest

from benchmarks import peer_trl
from benchmarks import peer_trl_workers as workers
from rlvr_jax import config as config_lib

# A worker that speaks the protocol: step s takes a + b * s seconds (step 1 takes 50 more,
# like a compile), its parts are fractions of that, and every command is logged in order.
FAKE_WORKER = textwrap.dedent("""
    import pathlib, sys
    import numpy as np
    from benchmarks.peer_trl_workers import READY, REPORT, Channel, Stop

    side, workdir, log = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
    a, b, logit_shift, fail_at, wrong_prompt_at = map(float, sys.argv[4:9])

    def questions(side, step):
        if side == "rlvr_jax":
            return [f"q{step}a", "elsewhere" if step == wrong_prompt_at else f"q{step}b"]
        return [f"q{step}{x}" for x in "abcd"]

    channel = Channel()
    print("library chatter on stdout must not reach the parent")
    workdir.mkdir(parents=True)
    np.savez(workdir / "probe.npz", ids=np.arange(5),
             logits=np.ones((5, 7), np.float32) + logit_shift)
    channel.send(READY, probe=str(workdir / "probe.npz"), versions={"fake": "1"})
    step = 0
    try:
        while True:
            channel.wait()
            step += 1
            with open(log, "a") as f:
                f.write(f"{side} {step}\\n")
            if step == fail_at:
                sys.exit("fake failure in step %d" % step)
            seconds = a + b * step + (50.0 if step == 1 else 0.0)
            channel.send(REPORT, step=step, step_s=seconds, window_s=seconds,
                         cpu_s=1.5 * seconds, children_cpu_s=0.1 * seconds,
                         split={"generation": 0.25 * seconds, "scoring": None,
                                "update": 0.5 * seconds},
                         tokens=64 + step, peak_rss_bytes=step * 2**30,
                         questions=questions(side, step),
                         rss_bytes=2**30 if step == 2 else 2**29, children_rss_bytes=2**20)
    except Stop:
        pass
""")
COEFFICIENTS = {"rlvr_jax": (10.0, 1.0), "trl": (0.0, 5.0)}


def fake_command(tmp_path, logit_shift=0.0, fail_at=0, wrong_prompt_at=0):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    log = tmp_path / "commands.log"

    def command(side, steps, workdir):
        a, b = COEFFICIENTS[side]
        shift = logit_shift if side == "trl" else 0.0
        return [sys.executable, str(script), side, str(workdir), str(log), str(a), str(b),
                str(shift), str(fail_at if side == "trl" else 0), str(wrong_prompt_at)]

    return command, log


def test_alternates_the_sides_and_reports_medians_after_warmup(tmp_path, capsys):
    command, log = fake_command(tmp_path)
    out = tmp_path / "result.json"
    result = peer_trl.main(["--steps", "5", "--workdir", str(tmp_path / "run"), "--out",
                            str(out), "--note", "test"], command=command)

    assert log.read_text().split("\n")[:-1] == [f"{side} {step}" for step in range(1, 6)
                                               for side in ("rlvr_jax", "trl")]
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    ours, theirs = result["sides"]["rlvr_jax"], result["sides"]["trl"]
    measured = range(3, 6)  # after the two warm-up steps
    ours_steps = [10.0 + s for s in measured]
    trl_steps = [5.0 * s for s in measured]
    assert ours["step_s"] == statistics.median(ours_steps) == 14.0
    assert theirs["step_s"] == statistics.median(trl_steps) == 20.0
    assert ours["first_step_s"] == 10.0 + 1.0 + 50.0 and theirs["first_step_s"] == 55.0
    assert result["speedup_of_ours"] == pytest.approx(20.0 / 14.0)
    assert ours["split_s"] == {"generation": 3.5, "scoring": None, "update": 7.0, "other": 3.5}
    assert ours["tokens_per_step"] == 68
    assert ours["cores_busy"] == pytest.approx(1.6)
    assert ours["cores_busy_worker_only"] == pytest.approx(1.5)
    assert ours["peak_rss_bytes"] == 5 * 2**30 and ours["children_rss_bytes"] == 2**20
    assert ours["step_end_rss_bytes"] == 2**30  # the largest over every step, warm-up included
    assert ours["measured_steps"] == [3, 5]
    assert result["probe"]["max_abs_logit_difference"] == 0.0
    assert [r["step"] for r in result["steps"]["trl"]] == [1, 2, 3, 4, 5]
    printed = capsys.readouterr().out
    assert "library chatter" not in printed
    assert "speed-up of rlvr_jax (TRL s/step / rlvr_jax s/step): 1.43" in printed
    assert "step 5/5: rlvr_jax 15.0 s, trl 25.0 s" in printed


def test_different_weights_stop_the_benchmark_before_any_step(tmp_path):
    command, log = fake_command(tmp_path, logit_shift=0.01)
    with pytest.raises(AssertionError, match=r"probe logits differ by up to 0\.01"):
        peer_trl.main(["--steps", "3", "--workdir", str(tmp_path / "run"), "--out",
                       str(tmp_path / "result.json")], command=command)
    assert not log.exists() and not (tmp_path / "result.json").exists()


def test_a_failing_worker_is_named_with_its_log(tmp_path):
    command, log = fake_command(tmp_path, fail_at=2)
    with pytest.raises(RuntimeError, match=r"(?s)the trl worker ended \(exit 1\).*fake failure "
                                           r"in step 2"):
        peer_trl.main(["--steps", "4", "--workdir", str(tmp_path / "run"), "--out",
                       str(tmp_path / "result.json")], command=command)
    assert log.read_text().split() == ["rlvr_jax", "1", "trl", "1", "rlvr_jax", "2", "trl", "2"]


def test_different_prompts_on_the_two_sides_stop_the_benchmark(tmp_path):
    command, log = fake_command(tmp_path, wrong_prompt_at=2)
    with pytest.raises(AssertionError, match=r"step 2: rlvr_jax trained on \['elsewhere'\]"):
        peer_trl.main(["--steps", "3", "--workdir", str(tmp_path / "run"), "--out",
                       str(tmp_path / "result.json")], command=command)
    assert log.read_text().split() == ["rlvr_jax", "1", "trl", "1", "rlvr_jax", "2", "trl", "2"]


@pytest.mark.parametrize("argv", [["--steps", "2"], ["--steps", "3", "--warmup", "-1"]])
def test_too_few_steps_for_the_warmup_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit):
        peer_trl.parse_args(argv)
    assert "must exceed --warmup" in capsys.readouterr().err


def test_trl_split_takes_generation_and_reward_out_of_the_rollout():
    split = workers.trl_split({"rollout": 5.0, "generation": 3.0, "verification": 0.5,
                               "forward": 2.0, "backward": 4.0, "optimizer": 0.25})
    assert split == {"generation": 3.0, "verification": 0.5, "scoring": 1.5, "forward": 2.0,
                     "backward": 4.0, "optimizer": 0.25}


class RecordingChannel:
    def __init__(self):
        self.sent = []

    def send(self, event, **fields):
        self.sent.append((event, fields))

    def wait(self):
        pass


def test_paced_progress_reports_the_runs_own_step_metrics(tmp_path):
    lines = [
        {"step": 1, "time/step_seconds": 9.0, "time/generation_seconds": 2.0,
         "time/verification_seconds": 0.5, "time/update_seconds": 6.0,
         "train/response_length_mean": 12.5},
        {"step": 1, "eval/pass@1": 0.25},  # a later line of the same step without timings
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    samples = {"step": 1, "samples/0": "QUESTION: What is 2 + 3?\nREFERENCE: 5\nREWARD: 1\n"
               "COMPLETION: 5", "samples/1": "QUESTION: Add 4\nand 4.\nREFERENCE: 8\n"
               "REWARD: 0\nCOMPLETION: 9\nREFERENCE: 8"}
    (tmp_path / "samples.jsonl").write_text(json.dumps(samples) + "\n")
    channel = RecordingChannel()
    meter = workers.Meter()
    meter.start()
    progress = workers.PacedProgress(channel, meter, tmp_path, group_rows=16)
    progress.set_postfix({"reward": 0.5}, refresh=False)
    progress.update()
    [(event, report)] = channel.sent
    assert event == workers.REPORT and report["step"] == 1 and report["step_s"] == 9.0
    assert report["split"] == {"generation": 2.0, "verification": 0.5, "scoring": None,
                               "update": 6.0}
    assert report["tokens"] == 12.5 * 16
    assert report["questions"] == ["What is 2 + 3?", "Add 4\nand 4."]
    assert report["peak_rss_bytes"] > 0 and report["window_s"] >= 0
    with pytest.raises(RuntimeError, match="no metrics of step 2"):
        progress.update()


def test_the_benchmark_config_is_the_main_jobs_recipe_apart_from_outside_the_step():
    spec = importlib.util.spec_from_file_location("recipe", workers.RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recipe = module.get_config("grpo")
    config = workers.benchmark_config(steps=12)
    changed = {"total_steps": 13, "eval.at_start": False, "eval.every_steps": 0,
               "checkpoint.save_every_steps": 0, "logging.tensorboard": False}
    ours, theirs = config_lib.flatten(config), config_lib.flatten(recipe)
    assert {k: v for k, v in ours.items() if theirs[k] != v} == changed
    assert ours.keys() == theirs.keys()
