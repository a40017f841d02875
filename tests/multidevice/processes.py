"""Launches a check script as N `jax.distributed` processes on this machine (CPU devices)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT_DIR = Path(__file__).parent


def free_port() -> int:
    """A TCP port nothing listens on now, for the coordinator."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(script: str, *args: str, devices_per_process: int,
                    num_processes: int = 2) -> list[subprocess.Popen]:
    """Starts ``SCRIPT_DIR/script args`` as ``num_processes`` processes of one job, each with
    ``devices_per_process`` CPU devices; returns them in process order."""
    port = free_port()
    children = []
    for process_id in range(num_processes):
        env = dict(os.environ)
        env.update(
            XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
            JAX_PLATFORMS="cpu",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES=str(num_processes),
            JAX_PROCESS_ID=str(process_id),
            PYTHONPATH=os.pathsep.join(sys.path),
        )
        children.append(subprocess.Popen(
            [sys.executable, str(SCRIPT_DIR / script), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
    return children


def finish_processes(children: list[subprocess.Popen], timeout: float = 600) -> list[dict]:
    """Waits for ``children``; the JSON each printed on its last stdout line, in process order.
    A process that fails fails the caller with its stderr."""
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=timeout)
        assert child.returncode == 0, stderr[-5000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def run_processes(script: str, *args: str, devices_per_process: int, num_processes: int = 2,
                  timeout: float = 600) -> list[dict]:
    """Runs ``SCRIPT_DIR/script args`` as ``num_processes`` processes of one job, each with
    ``devices_per_process`` CPU devices; returns the JSON each printed on its last stdout line,
    in process order. A process that fails fails the caller with its stderr."""
    children = start_processes(script, *args, devices_per_process=devices_per_process,
                               num_processes=num_processes)
    return finish_processes(children, timeout)
