"""The code sandbox against an adversary, as the CI user and as an unprivileged user.

``sandbox_attacks.py`` (the table of escape and verdict-forgery attempts) runs in a process
that plays the trainer, once as this test's user and, when this test runs as root, once as
``nobody`` (through ``setpriv``), each time with the audit hook disabled from inside by the
attack itself and once without the hook at all: only the operating system's layers may stop
the attacks. The layers each run had are printed. Where the kernel allows namespaces for that
user (checked independently with util-linux's ``unshare``), the essential layers must be on.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from rlvr_jax.rewards import sandbox

REWARDS = os.path.join(os.path.dirname(sandbox.__file__))
ATTACKS = os.path.join(os.path.dirname(__file__), "sandbox_attacks.py")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
SECRET = "do-not-read-" + os.urandom(6).hex()


@pytest.fixture(scope="module")
def attack_kit():
    """The sandbox's files and the attack table in a directory anyone can read."""
    with tempfile.TemporaryDirectory(prefix="rlvr_attack_kit_") as kit:
        for name in os.listdir(REWARDS):
            if name.startswith("sandbox") and name.endswith(".py"):
                shutil.copy(os.path.join(REWARDS, name), kit)
        shutil.copy(ATTACKS, kit)
        for path in [kit, *(os.path.join(kit, name) for name in os.listdir(kit))]:
            os.chmod(path, 0o755)
        yield kit


def _usable(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _interpreter(as_nobody: bool) -> str | None:
    """This test's Python if the user can run it (the launcher re-runs it), else the system's."""
    check = "import ctypes, os, sys; sys.exit(not os.access(sys.executable, os.X_OK))"
    for python in (sys.executable, "/usr/bin/python3"):
        prefix = NOBODY if as_nobody else []
        if _usable([*prefix, python, "-I", "-S", "-c", check]):
            return python
    return None


def _kernel_allows_namespaces(as_nobody: bool) -> bool:
    """Whether this user can get the sandbox's namespaces, asked of util-linux, not of us."""
    if os.geteuid() == 0 and not as_nobody:
        return _usable(["unshare", "--net", "--mount", "--pid", "--ipc", "--fork", "true"])
    prefix = NOBODY if as_nobody else []
    return _usable([*prefix, "unshare", "--user", "--map-current-user", "--net", "--mount",
                    "--pid", "--ipc", "--fork", "true"])


@pytest.mark.parametrize("audit_hook", [True, False], ids=["hook_disabled_from_inside",
                                                          "no_hook"])
@pytest.mark.parametrize("as_nobody", [False, True], ids=["as_test_user", "as_nobody"])
def test_escape_and_forgery_attempts_are_contained(attack_kit, as_nobody, audit_hook, capsys):
    if as_nobody and (os.geteuid() != 0 or shutil.which("setpriv") is None):
        pytest.skip("switching to another user needs root and setpriv")
    python = _interpreter(as_nobody)
    if python is None:
        pytest.skip("no Python interpreter this user can run")
    command = [*(NOBODY if as_nobody else []), python, "-I", os.path.join(attack_kit,
               "sandbox_attacks.py"), attack_kit, *([] if audit_hook else ["--no-audit-hook"])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd="/",
                          env={"PATH": os.environ["PATH"], "RLVR_ATTACK_SECRET": SECRET})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    with capsys.disabled():
        print(f"\nsandbox layers for uid {report['uid']} ({python}): {report['layers']}")
    escaped = {name: what for name, what in report["escapes"].items() if what}
    forged = {name: what for name, what in report["forgeries"].items() if what}
    allowed = _kernel_allows_namespaces(as_nobody)
    assert not (allowed and escaped), f"the kernel allows namespaces, yet {escaped}"
    assert not forged  # the judge's separation holds with or without namespaces
    assert report["correct_solution_passes"]
    assert len(report["escapes"]) == 11 and len(report["forgeries"]) == 8
    if not allowed:
        with capsys.disabled():
            print(f"NO NAMESPACES for uid {report['uid']} here: not contained: {escaped}")
        pytest.skip("the kernel gives this user no namespaces (util-linux unshare fails)")
    missing = [options for options in sandbox.ESSENTIAL_LAYERS
               if not set(options) & set(report["layers"])]
    assert not missing, f"the kernel allows namespaces, but the sandbox lacks {missing}"
