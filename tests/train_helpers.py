"""Helpers shared by the tests: the train command line of a tiny run, the one folder snapshot
(:func:`snapshot`) and the one "refused in one line, nothing changed" check (:func:`fails`)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from modetune.cli import main


def train_args(model_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--output-dir", str(out), "--data", "builtin:arithmetic:48",
            "--val-size", "4", "--lora-r", "4", "--lora-dropout", "0", "--report-to", "none", "--warmup-steps", "0",
            "--learning-rate", "1e-2", *extra]


FAULT_CLI = str(Path(__file__).with_name("fault_cli.py"))  # the CLI, with MODETUNE_TEST_FAULT's fault if set


def run_cli(*args, env_extra=None, input_text=None):
    """``python -m modetune.cli ARGS`` in a subprocess (``input_text``: piped to its stdin; a
    ``MODETUNE_TEST_FAULT`` in ``env_extra``: that fault passed to ``train()``, tests/faults.py)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, FAULT_CLI, *args], capture_output=True, text=True, env=env,
                          timeout=600, input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)


def snapshot(*paths: Path) -> dict[str, str]:
    """``{path: sha1}`` of every file under each of ``paths`` (a file or a folder; a missing one is
    empty): what "nothing on disk changed" compares."""
    files = {}
    for path in map(Path, paths):
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
        files.update({str(f): hashlib.sha1(f.read_bytes()).hexdigest() for f in found})
    return files


def fails(capsys, argv, match, command="train", unchanged=()) -> str:
    """``main(argv)`` exits 1 with one line ``modetune COMMAND: error: ...match...``, no traceback,
    and every file under ``unchanged`` (paths) left as it was: the one check of a refused command.
    Returns that line."""
    before = snapshot(*unchanged)
    capsys.readouterr()
    assert main(argv) == 1, argv
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # (progress bars of model loading may come before it)
    assert f"modetune {command}: error: " in last and match in last.split("error: ", 1)[1], err
    assert snapshot(*unchanged) == before, f"{argv} changed files it refused to touch"
    return last


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
