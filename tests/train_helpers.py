"""Helpers shared by the training and command-line tests: the train command line of a tiny run,
and the one-line error check."""

from __future__ import annotations

import os
import subprocess
import sys

from modetune.cli import main


def train_args(model_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--output-dir", str(out), "--data", "builtin:arithmetic:48",
            "--val-size", "4", "--lora-r", "4", "--lora-dropout", "0", "--report-to", "none", "--warmup-steps", "0",
            "--learning-rate", "1e-2", *extra]


def run_cli(*args, env_extra=None, input_text=None):
    """``python -m modetune.cli ARGS`` in a subprocess (``input_text``: piped to its stdin)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "modetune.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)


def fails(capsys, argv, match, command="train"):
    """``main(argv)`` exits 1 with one line ``modetune COMMAND: error: ...match...`` and no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # (progress bars of model loading may come before it)
    assert f"modetune {command}: error: " in last and match in last.split("error: ", 1)[1], err


def free_port() -> int:
    """A TCP port free on this machine now (for a launcher's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_workers(launcher: list[str], worker: str, out) -> None:
    """Run ``python -m LAUNCHER... WORKER OUT`` (2 CPU processes: torchrun or accelerate launch) with
    this checkout's ``src`` first on the path, one thread each, offline; it must exit 0."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.join(root, "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", *launcher, os.path.join(os.path.dirname(__file__), worker),
                             str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
