"""Sandboxed code runner: attacks are stopped or contained, and the next item still scores."""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from rlvr_jax.data.humaneval import HumanEvalSource
from rlvr_jax.rewards import sandbox
from rlvr_jax.rewards.code_verifier import CodeVerifier, candidate_program, extract_code
from rlvr_jax.rewards.sandbox import (
    ERROR,
    FAILED,
    LAYERS,
    MAX_SLOTS,
    PASSED,
    TIMEOUT,
    SandboxLimits,
    _acquire_slot,
    _processes_of_uid,
    isolation,
    isolation_metrics,
    run_python,
    run_tests,
    sandbox_uid,
)
from rlvr_jax.rewards.verification import Status

LIMITS = SandboxLimits(timeout_s=2.0, memory_bytes=512 << 20, max_processes=4)


@pytest.fixture(scope="module")
def problems():
    source = HumanEvalSource()
    return [source[i] for i in range(len(source))]


def _assert_no_sandbox_processes_left():
    if os.geteuid() == 0:  # only root runs programs under sandbox uids
        assert all(_processes_of_uid(sandbox_uid(slot)) == [] for slot in range(MAX_SLOTS))


def test_clean_program_passes_and_failing_assert_fails():
    assert run_python("assert sum([1, 2]) == 3\nprint('hello')", LIMITS).status == PASSED
    result = run_python("assert 1 + 1 == 3", LIMITS)
    assert result.status == FAILED and "AssertionError" in result.stderr


def test_run_python_reports_the_exit_status():
    result = run_python("import sys\nprint('out')\nsys.exit(3)", LIMITS)
    assert (result.status, result.returncode, result.stdout) == (FAILED, 3, "out\n")
    assert run_python("import sys\nsys.exit()", LIMITS).status == PASSED


@pytest.mark.parametrize(
    "program", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit(0)"]
)
def test_exiting_early_is_not_a_pass(program):
    tests = "def check(candidate):\n    assert candidate(1) == 2\n"
    result = run_tests(program + "\ndef f(x):\n    return x + 1\n", "f", tests, limits=LIMITS)
    assert result.status == FAILED
    assert run_tests("def f(x):\n    return x + 1\n", "f", tests, limits=LIMITS).passed


def test_infinite_loop_times_out():
    result = run_python("while True:\n    pass", LIMITS)
    assert result.status == TIMEOUT
    assert result.duration_s < LIMITS.timeout_s + 3.0
    _assert_no_sandbox_processes_left()


def test_fork_is_refused():
    result = run_python("import os\nwhile True:\n    os.fork()", LIMITS)
    assert result.status == FAILED and "os.fork is not allowed" in result.stderr


def test_fork_bomb_is_bounded_by_process_limit():
    program = (
        "import os, time\n"
        "forked = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    forked += 1\n"
        "print('forked', forked)\n"
    )
    limits = SandboxLimits(timeout_s=3.0, max_processes=4, allow_processes=True)
    result = run_python(program, limits)
    assert result.status == PASSED
    assert int(result.stdout.split()[-1]) <= limits.max_processes
    _assert_no_sandbox_processes_left()  # the sleeping children were killed and reaped


def test_ten_gigabyte_allocation_fails():
    result = run_python("block = bytearray(10 * 1024 ** 3)\nprint(len(block))", LIMITS)
    assert result.status == FAILED and "MemoryError" in result.stderr


def test_writing_outside_working_directory_is_refused():
    with tempfile.TemporaryDirectory() as outside:
        os.chmod(outside, 0o777)  # writable by anyone: only the sandbox itself can refuse
        target = os.path.join(outside, "escaped.txt")
        result = run_python(f"open({target!r}, 'w').write('x')", LIMITS)
        assert result.status == FAILED and "outside the working dir" in result.stderr
        assert not os.path.exists(target)
    inside = run_python("open('ok.txt', 'w').write('x')\nassert open('ok.txt').read() == 'x'")
    assert inside.status == PASSED


def test_large_file_is_stopped_by_file_size_limit():
    limits = SandboxLimits(timeout_s=3.0, file_size_bytes=1 << 20)
    result = run_python("open('big', 'wb').write(b'x' * (8 << 20))", limits)
    assert result.status == FAILED and "File too large" in result.stderr


def test_network_socket_cannot_connect():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    program = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
    )
    result = run_python(program, LIMITS)
    assert result.status == FAILED
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()


def test_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("RLVR_TEST_SECRET", "hunter2")
    program = (
        "import os\n"
        "assert not any('hunter2' in value for value in os.environ.values())\n"
        f"for path in ['/proc/{os.getpid()}/environ', '../../proc/{os.getpid()}/environ']:\n"
        "    try:\n"
        "        data = open(path, 'rb').read()\n"
        "    except OSError:\n"
        "        data = b''\n"
        "    assert b'hunter2' not in data\n"
        "print(sorted(os.environ))\n"
    )
    result = run_python(program, LIMITS)
    assert result.status == PASSED  # the program looked and found nothing
    assert result.stdout.strip() == "['HOME', 'LANG', 'PATH']"


def test_isolation_report_names_the_layers():
    report = isolation()
    assert tuple(report) == LAYERS
    ran = run_python("pass", LIMITS).layers
    assert {layer for layer, active in report.items() if active} == set(ran)
    assert report["audit_hook"] and report["resource_limits"]
    assert not report["sandbox_uid"] or os.geteuid() == 0  # a uid of its own needs root
    metrics = isolation_metrics()
    assert metrics["sandbox_confined"] == float(metrics["sandbox_layers_missing"] == 0)


def test_attacks_then_correct_solutions_in_one_batch(problems):
    attacks = [
        "while True:\n    pass",
        "import os\nwhile True:\n    os.fork()",
        "x = bytearray(10 * 1024 ** 3)",
        "open('/tmp/rlvr_sandbox_escape', 'w')",
        "import socket\nsocket.socket().connect(('1.1.1.1', 80))",
    ]
    completions, batch = [], []
    for attack, problem in zip(attacks, problems, strict=False):
        completions += [f"```python\n{attack}\n```", problem["answer"]]
        batch += [problem, problem]
    verifier = CodeVerifier(num_workers=2, limits=LIMITS)
    report = verifier.verify(completions, batch)
    np.testing.assert_array_equal(report.rewards, [0.0, 1.0] * len(attacks))
    assert report.timeouts == 1
    assert not os.path.exists("/tmp/rlvr_sandbox_escape")


def test_humaneval_correct_passes_and_wrong_fails(problems):
    chosen = problems[:8]
    correct = [p["prompt"] + p["answer"] for p in chosen]  # full function, as a model writes it
    wrong = ["    return None\n"] * len(chosen)
    partly_right = [
        "```python\ndef has_close_elements(numbers, threshold):\n    return len(numbers) > 1\n```"
    ]  # passes the first assert of HumanEval/0, fails a later one
    verifier = CodeVerifier(num_workers=2, limits=LIMITS)
    report = verifier.verify(correct + wrong + partly_right, chosen + chosen + chosen[:1])
    np.testing.assert_array_equal(report.rewards, [1.0] * 8 + [0.0] * 8 + [0.0])


def test_candidate_program_holds_the_solution_and_not_the_tests(problems):
    problem = problems[0]
    body = candidate_program("    pass\n", problem)
    assert body == problem["prompt"] + "    pass\n"
    full = candidate_program(f"def {problem['entry_point']}(numbers, threshold):\n    pass\n",
                             problem)
    assert full.startswith(problem["prompt"] + "\n\n") and "def check" not in full
    assert extract_code("text\n```python\nA = 1\n```\nmore\n```py\nB = 2\n```") == "B = 2\n"
    assert extract_code("   \n") is None


def test_concurrent_runs_get_distinct_uids():
    with _acquire_slot() as first, _acquire_slot() as second:
        assert first != second and sandbox_uid(first) != sandbox_uid(second)
    with _acquire_slot() as again:
        assert again == min(first, second)  # released slots are reused


def test_always_equal_objects_do_not_pass(problems):
    always_equal = (
        "```python\nclass AlwaysEqual:\n"
        "    def __eq__(self, other):\n        return True\n\n"
        "class Sneaky(int):\n"
        "    def __eq__(self, other):\n        return True\n\n"
        "def has_close_elements(numbers, threshold):\n"
        "    return {}\n```"
    )
    completions = [always_equal.format("AlwaysEqual()"), always_equal.format("Sneaky(0)")]
    verifier = CodeVerifier(num_workers=2, limits=LIMITS)
    report = verifier.verify([*completions, problems[0]["answer"]], [problems[0]] * 3)
    np.testing.assert_array_equal(report.rewards, [0.0, 0.0, 1.0])


def test_code_verifier_presents_the_verifier_interface(problems):
    verifier = CodeVerifier(num_workers=1, limits=LIMITS)
    completions = ["   \n", "```python\nwhile True:\n    pass\n```", problems[0]["answer"]]
    verification = verifier.verify(completions, [problems[0]] * 3)
    assert verification.statuses == (Status.NO_ANSWER, Status.TIMEOUT, Status.OK)
    np.testing.assert_array_equal(verification.rewards, [0.0, 0.0, 1.0])
    assert verifier.extract("```python\nx = 1\n```") == "x = 1\n"
    verifier.close()


STDLIB_MODULES = ["difflib", "zlib", "queue", "base64", "csv", "shlex", "pprint", "ipaddress",
                  "calendar", "struct", "binascii", "secrets", "statistics", "uuid"]


def test_solutions_importing_the_standard_library_pass(problems):
    """The program's uid (as root, one of its own) must be able to import any stdlib module."""
    solution = ("```python\nimport {}\n\ndef has_close_elements(numbers, threshold):\n"
                "    return any(abs(a - b) < threshold\n"
                "               for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```")
    completions = [solution.format(name) for name in STDLIB_MODULES]
    report = CodeVerifier(num_workers=2, limits=LIMITS).verify(
        completions, [problems[0]] * len(completions))
    failed = [name for name, reward in zip(STDLIB_MODULES, report.rewards, strict=True)
              if reward != 1.0]
    assert not failed, f"correct solutions importing {failed} scored 0"


def test_disk_quota_bounds_everything_written():
    limits = SandboxLimits(timeout_s=5.0, file_size_bytes=4 << 20, disk_bytes=8 << 20)
    program = (
        "written = 0\n"
        "try:\n"
        "    for i in range(16):\n"  # 16 files of 1 MiB: each under the file-size limit
        "        with open(f'part{i}', 'wb') as f:\n"
        "            f.write(b'x' * (1 << 20))\n"
        "        written += 1\n"
        "except OSError as error:\n"
        "    print(error.strerror)\n"
        "print(written)\n"
    )
    result = run_python(program, limits)
    if "disk_quota" not in result.layers:
        pytest.skip(f"no private tmpfs on this host (layers: {result.layers})")
    reason, written = result.stdout.split("\n")[:2]
    assert reason == "No space left on device" and int(written) <= 8  # 8 MiB in all


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_every_process_of_a_run_dies_with_the_trainer():
    """SIGKILL the process that runs the sandbox: the launcher, the program and a daemon it
    started (in a new session) all die with it, long before the run's own timeout."""
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
               "time.sleep(60)\n")
    stages_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "rlvr_sandbox_*")))
    trainer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from rlvr_jax.rewards.sandbox import run_python, SandboxLimits; "
         f"run_python({program!r}, SandboxLimits(timeout_s=30, allow_processes=True))"],
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 30
    while len(_descendants(trainer.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # at least the launcher, the program and its child
    time.sleep(1.0)  # the program has forked its daemon
    run = _descendants(trainer.pid)
    assert len(run) >= 3, "the sandboxed program did not start"
    trainer.kill()
    trainer.wait()
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{pid}") for pid in run) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in run if os.path.exists(f"/proc/{pid}")]
    assert not left, f"{len(left)} processes of the run outlived the trainer"
    for stage in set(glob.glob(os.path.join(tempfile.gettempdir(), "rlvr_sandbox_*"))) - \
            stages_before:  # the killed trainer could not remove its (empty) stage directory
        shutil.rmtree(stage, ignore_errors=True)


DEGRADED_HOST = """
import json, logging, sys
from rlvr_jax.rewards import sandbox_seccomp
assert sandbox_seccomp.install()  # from here on this process and its children get no namespace
logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
from rlvr_jax.data.humaneval import HumanEvalSource
from rlvr_jax.rewards.code_verifier import CodeVerifier
problem = HumanEvalSource()[0]
verifier = CodeVerifier(num_workers=1)
report = verifier.verify(
    ["import difflib\\n" + problem["prompt"] + problem["answer"], "    return True\\n"],
    [problem, problem])
print(json.dumps({"rewards": report.rewards.tolist(), "metrics": verifier.isolation_metrics()}))
"""


def test_a_host_without_namespaces_is_reported_loudly_and_still_judges():
    """Where the kernel refuses namespaces (simulated with a seccomp filter on the trainer),
    the verifier logs a warning naming what is missing, its metrics say so, and it still
    judges: the correct solution passes and the wrong one fails."""
    done = subprocess.run([sys.executable, "-c", DEGRADED_HOST], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr
    warning, result = done.stdout.strip().split("\n")[-2:]
    assert warning.startswith("CODE SANDBOX NOT CONFINED")
    assert all(layer in warning for layer in ("network_namespace", "pid_namespace",
                                              "mount_namespace"))
    assert json.loads(result) == {"rewards": [1.0, 0.0], "metrics": {
        "sandbox_confined": 0.0, "sandbox_layers_missing": 3.0 if os.geteuid() == 0 else 4.0}}


def test_a_function_that_hangs_times_out_even_if_the_tests_swallow_errors():
    program = "def f(x):\n    while True:\n        pass\n"
    swallowing = ("def check(candidate):\n    for x in range(3):\n        try:\n"
                  "            candidate(x)\n        except Exception:\n            pass\n")
    result = run_tests(program, "f", swallowing, limits=SandboxLimits(timeout_s=1.0))
    assert result.status == TIMEOUT
    assert result.duration_s < 1.0 + 3.0


def test_a_sandbox_that_cannot_start_is_a_crash_not_a_wrong_answer(monkeypatch, tmp_path,
                                                                   problems):
    isolation()  # probed with the real launcher (cached) before it is broken below
    broken = tmp_path / "launcher.py"
    broken.write_text("raise SystemExit('broken launcher')\n")
    monkeypatch.setattr(sandbox, "_CHILD", str(broken))
    result = run_python("pass", LIMITS)
    assert result.status == ERROR and "broken launcher" in result.error
    report = CodeVerifier(num_workers=1, limits=LIMITS).verify(
        [problems[0]["prompt"] + problems[0]["answer"]], [problems[0]])
    assert report.statuses == (Status.CRASH,) and report.crashes == 1
