"""The run folder of ``modetune train``: never overwritten by accident, resumed only from a
complete checkpoint trained with the same settings.

- :func:`prepare_run_dir`: a folder that already holds a run is refused unless ``resume``
  (continue it) or ``overwrite`` (remove the old run first, checkpoints included).
- :func:`pick_checkpoint`: the newest checkpoint whose every file loads (JSON parses,
  safetensors load, torch files pass their CRC checks); damaged ones are named and skipped;
  :func:`chosen_checkpoint`: the one ``--resume PATH`` names, with the same checks (damage refused).
- :func:`check_same_settings`: a resume with other settings names the fields and stops.
- :func:`settle_resume` (once the base matched): :func:`trim_log` keeps ``log.jsonl``'s steps up to the
  checkpoint, so a resumed run never logs a step twice; :func:`remove_staging` clears a killed save's
  ``.staging``; a chosen checkpoint's later ones are removed.
- what leaves the folder: :func:`name_tensorboard_run` (``runs/RUN_NAME``) and :func:`push_adapter`
  (``push_to_hub``: the finished adapter to the hub, or one line and the local adapter kept).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from ..loading.adapter import file_problem
from ..utils.checks import differing_settings
from ..utils.errors import ConfigError, DataError, UserError, first_line
from ..utils.integrity import damage, read_json, warn
from ..utils.outputs import write_text
from .config import TRAIN_CONFIG_NAME, TrainConfig

LOG_NAME = "log.jsonl"
# what a training run writes into its folder (removed by --overwrite); plus every checkpoint-N
RUN_ITEMS = ("adapter", LOG_NAME, "summary.json", "train_questions.json", "loss.png", "routing.png", "runs",
             ".staging", ".adapter.modetune-staging", ".adapter.modetune-old")
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
# settings that may change between a run and its resumption (they do not change the weights)
RESUMABLE_FIELDS = {"output_dir", "report_to", "logging_steps", "save_steps", "save_total_limit", "eval_steps",
                    "trust_remote_code", "run_name", "project", "push_to_hub", "hub_model_id"}
LATEST = "latest"  # --resume alone: the newest complete checkpoint
BUDGET_FIELDS = {"max_steps", "num_epochs"}  # may grow on resume (the run is extended)


def checkpoints(run_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders of a run, newest (largest N) first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a training run."""
    return bool(checkpoints(run_dir)) or any((run_dir / name).exists() for name in RUN_ITEMS[:4])


def remove_run(run_dir: Path) -> None:
    """Remove every file a training run wrote into ``run_dir`` (other files stay)."""
    for path in [*checkpoints(run_dir), *(run_dir / name for name in RUN_ITEMS)]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def checkpoint_damage(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (the first damaged or missing file), or ``None``."""
    if not (checkpoint / "trainer_state.json").is_file():
        return f"{checkpoint / 'trainer_state.json'} is missing."
    for path in sorted(checkpoint.iterdir()):
        problem = (damage(path) or file_problem(path)) if path.is_file() else None  # a checkpoint is an adapter
        if problem:
            return problem
    return None


def pick_checkpoint(run_dir: Path) -> Path:
    """The newest complete, loadable checkpoint; warns about each damaged one it skips."""
    found = checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"--resume: no checkpoint found in {run_dir}.")
    problems = []
    for checkpoint in found:
        problem = checkpoint_damage(checkpoint)
        if problem is None:
            for earlier in problems:
                warn(f"skipping a damaged checkpoint: {earlier}")
            if problems:
                print(f"[modetune] resuming from {checkpoint.name}, the newest complete checkpoint", flush=True)
            return checkpoint
        problems.append(problem)
    raise DataError(f"--resume: no complete checkpoint in {run_dir}: {'; '.join(problems)}")


def chosen_checkpoint(run_dir: Path, name: str) -> Path:
    """The checkpoint ``--resume NAME`` names: ``checkpoint-N`` of ``run_dir``, or a path to one of its
    checkpoints; refused (one line) when it is not one of them or a file in it is damaged."""
    found = {p.resolve(): p for p in checkpoints(run_dir)}
    candidates = [Path(name), run_dir / name]
    match = next((found[c.resolve()] for c in candidates if c.is_dir() and c.resolve() in found), None)
    if match is None:
        names = ", ".join(p.name for p in reversed(checkpoints(run_dir))) or "none"
        raise ConfigError(f"--resume {name}: not a checkpoint folder of {run_dir} (its checkpoints: {names}).")
    problem = checkpoint_damage(match)
    if problem:
        raise DataError(f"--resume {name}: the checkpoint is damaged: {problem}")
    return match


def drop_newer(run_dir: Path, checkpoint: Path) -> None:
    """Remove the checkpoints after ``checkpoint`` (a run resumed from an earlier step replaces them), naming them."""
    newer = [p for p in checkpoints(run_dir) if int(p.name.split("-")[1]) > int(checkpoint.name.split("-")[1])]
    for path in newer:
        shutil.rmtree(path)
    if newer:
        print(f"[modetune] resuming from {checkpoint.name}: removed the later {', '.join(p.name for p in newer)}",
              flush=True)


def extends_budget(saved: dict, wanted: dict) -> bool:
    """Whether ``wanted`` trains the same run for longer: a larger ``max_steps``, or (both
    counting in epochs, ``max_steps`` -1) a larger ``num_epochs``."""
    old_steps, new_steps = saved.get("max_steps", -1), wanted["max_steps"]
    if old_steps > 0 or new_steps > 0:
        return old_steps > 0 and new_steps > old_steps
    return wanted["num_epochs"] > saved.get("num_epochs", wanted["num_epochs"])


def check_same_settings(checkpoint: Path, config: TrainConfig) -> None:
    """Refuse to resume ``checkpoint`` with settings other than those it was trained with; a
    longer budget (:func:`extends_budget`) is allowed: the run continues to it."""
    path = checkpoint / TRAIN_CONFIG_NAME
    if not path.is_file():
        return
    saved, wanted = read_json(path), config.to_dict()
    allowed = RESUMABLE_FIELDS | (BUDGET_FIELDS if extends_budget(saved, wanted) else set())
    differ = differing_settings(saved, wanted, TrainConfig().to_dict(), allowed)
    if differ:
        detail = ", ".join(f"{key} {saved.get(key)!r} -> {wanted.get(key)!r}" for key in differ)
        raise ConfigError(f"--resume: the settings differ from those of {checkpoint} ({detail}); resume with the "
                          "same settings, or pass --overwrite to start over.")


COMPLETE = "complete"  # prepare_run_dir's answer for a finished run resumed with the same budget


def reached_end(checkpoint: str | Path, config: TrainConfig) -> bool:
    """Whether ``checkpoint`` holds the run's last step and ``config`` asks for no more (no larger
    budget, :func:`extends_budget`); resuming it then trains no step."""
    state = read_json(Path(checkpoint) / "trainer_state.json")
    saved = Path(checkpoint) / TRAIN_CONFIG_NAME
    longer = saved.is_file() and extends_budget(read_json(saved), config.to_dict())
    return state.get("global_step", 0) >= state.get("max_steps", 0) > 0 and not longer


def is_complete(run_dir: Path, checkpoint: Path, config: TrainConfig) -> bool:
    """Whether the run finished: :func:`reached_end`, and its adapter and summary were written after
    the last step (a kill after it, in the adapter write or the final validation, leaves them out)."""
    return reached_end(checkpoint, config) and (run_dir / "summary.json").is_file() \
        and (run_dir / "adapter" / TRAIN_CONFIG_NAME).is_file()


def trim_log(run_dir: Path, checkpoint: Path) -> None:
    """Keep the rows of ``log.jsonl`` the run had logged when ``checkpoint`` was saved (as many as
    its ``trainer_state.json``'s ``log_history``: each log is one row of both), dropping any
    unreadable line, atomically; so no row is logged twice and none after the checkpoint stays."""
    path = run_dir / LOG_NAME
    if not path.is_file():
        return
    logged = len(read_json(checkpoint / "trainer_state.json").get("log_history", []))
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and len(kept) < logged:
            kept.append(line + "\n")
    write_text(path, "".join(kept))


def remove_staging(run_dir: Path) -> None:
    """Remove (and name) the ``.staging`` folder a run killed inside a checkpoint save left: the partial
    checkpoint and any process's files in it (a node with a folder of its own clears its own at its
    first save, ``MoDTrainer._save_checkpoint``)."""
    staging = run_dir / ".staging"
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
        print(f"[modetune] removed {staging}, the partial checkpoint of an interrupted run", flush=True)


def prepare_run_dir(config: TrainConfig, resume: bool | str | None = False, overwrite: bool = False,
                    is_main: bool = True) -> str | None:
    """Check (and with ``overwrite``, clear) the run folder before anything loads; returns the
    checkpoint to resume from (``None``: start afresh). ``resume``: ``True`` or ``"latest"`` (the newest
    complete checkpoint), or a checkpoint of the run (:func:`chosen_checkpoint`). Only the main process
    removes or edits files."""
    run_dir = Path(config.output_dir)
    chosen = resume if isinstance(resume, str) and resume != LATEST else None
    if resume and overwrite:
        raise ConfigError("Choose one of --resume (continue the run) and --overwrite (start it over).")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir {run_dir} is a file, not a folder.")
    if resume and not chosen and holds_run(run_dir) and not checkpoints(run_dir):  # killed before its first checkpoint
        print(f"[modetune] {run_dir} holds no checkpoint yet: the run starts again from step 0", flush=True)
        if is_main:
            remove_run(run_dir)
        return None
    if resume:
        checkpoint = chosen_checkpoint(run_dir, chosen) if chosen else pick_checkpoint(run_dir)
        check_same_settings(checkpoint, config)
        if (not chosen or checkpoint == checkpoints(run_dir)[0]) and is_complete(run_dir, checkpoint, config):
            return COMPLETE
        return str(checkpoint)  # the folder is changed by settle_resume, once the base is checked
    if overwrite:
        if is_main:
            remove_run(run_dir)
    elif holds_run(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to "
                          "start over (removing it, checkpoints included).")
    return None


def settle_resume(config: TrainConfig, checkpoint: str, resume: bool | str | None, is_main: bool = True) -> None:
    """Ready the folder for resuming from ``checkpoint`` (called once the model loaded and its base matched
    the checkpoint's, so a refused resume changes nothing): a chosen checkpoint's later ones removed,
    ``log.jsonl`` trimmed to it, a killed save's staging cleared. Only the main process edits files."""
    if not is_main:
        return
    run_dir, checkpoint = Path(config.output_dir), Path(checkpoint)
    if isinstance(resume, str) and resume != LATEST:
        drop_newer(run_dir, checkpoint)
    trim_log(run_dir, checkpoint)
    remove_staging(run_dir)


def finished_run(config: TrainConfig, is_main: bool = True) -> dict:
    """The summary of the complete run ``--resume`` found (nothing trains); with ``push_to_hub`` its adapter is
    pushed (again, when an earlier push failed)."""
    summary = read_json(Path(config.output_dir) / "summary.json")
    print(f"[modetune] {config.output_dir} holds a complete run ({summary.get('steps')} steps): nothing to do. "
          "Pass a larger --max-steps or --num-epochs with --resume to train it further.", flush=True)
    if config.push_to_hub and is_main:
        push_adapter(Path(config.output_dir) / "adapter", config)
    return summary


def warn_offline_push(config: TrainConfig, is_main: bool = True) -> None:
    """Say before training that ``push_to_hub`` will fail when ``HF_HUB_OFFLINE`` is set (the run still trains)."""
    if config.push_to_hub and is_main and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        print("[modetune] warning: push_to_hub with HF_HUB_OFFLINE set: the push after training will fail (the "
              "adapter stays in output_dir)", file=sys.stderr, flush=True)


def name_tensorboard_run(trainer, config: TrainConfig) -> None:
    """With ``run_name``, TensorBoard logs into ``output_dir/runs/RUN_NAME`` (its run list shows the name),
    unless ``$TENSORBOARD_LOGGING_DIR`` chose a folder; W&B and MLflow read ``run_name`` from the arguments."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if config.run_name and isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(Path(config.output_dir, "runs", config.run_name))


def push_adapter(adapter: Path, config: TrainConfig) -> str:
    """Upload the finished adapter folder (its model card ``README.md`` included) to the hub repository
    ``hub_model_id`` (default: the run folder's name), created if missing; returns its id. The hub
    unreachable or refusing (offline, no token, no network): one :class:`UserError` line, the local
    adapter kept."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from ..utils.version import __version__

    repo = config.hub_model_id or Path(config.output_dir).resolve().name
    hub_errors = (OSError, ValueError, *[c for c in HfHubHTTPError.__mro__ if c.__name__ == "HTTPError"])
    try:
        api = HfApi()
        repo = api.create_repo(repo, repo_type="model", exist_ok=True).repo_id
        api.upload_folder(folder_path=str(adapter), repo_id=repo, repo_type="model",
                          commit_message=f"modetune {__version__}: {config.preset} adapter")
    except hub_errors as error:
        raise UserError(f"push_to_hub: the adapter could not be pushed to {repo} ({first_line(error)}); it is kept "
                        f"in {adapter}: push it later with `hf upload {repo} {adapter}`.") from None
    print(f"[modetune] pushed {adapter} to https://huggingface.co/{repo}", flush=True)
    return repo
