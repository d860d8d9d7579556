"""One output policy for every command that writes (docs/reliability.md).

1. :func:`check_output`, before anything loads: an output that is, holds or lies inside one of the
   command's inputs is refused; an existing output is refused unless ``overwrite``.
2. :func:`staged`: the command writes into a staging path beside the target (``.NAME.modetune-staging``),
   renamed into place when it has finished, so a kill leaves the old output or the complete new one,
   never a half. A staging path left by a killed run is named and removed by the next run.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError

STAGING = ".modetune-staging"
RETIRED = ".modetune-old"  # the replaced output, during the two renames that swap it out


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(target: str | Path, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
                 flag: str = "--output") -> Path:
    """Refuse ``target`` when it is, holds or lies inside an existing input (always), or exists (an
    empty folder aside) and ``overwrite`` is off. Inputs that are not local paths (hub names,
    ``None``) are skipped."""
    path = Path(target).resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if _inside(path, source) or _inside(source, path):
            relation = "is" if path == source else "lies inside" if _inside(path, source) else "holds"
            raise ConfigError(f"{flag} {target} {relation} the input {given}: inputs are never written; "
                              "choose another path.")
    empty_folder = path.is_dir() and not any(path.iterdir())
    if path.exists() and not empty_folder and not overwrite:
        raise ConfigError(f"{flag} {target} already exists; pass --overwrite to replace it.")
    return path


def data_paths(spec: str) -> list[str]:
    """The local paths in a data spec (``a.json,b.jsonl?half=train``); other sources are no paths."""
    return [part.split("?")[0].strip() for part in spec.split(",") if part.strip()]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def stage_path(target: Path, folder: bool = True) -> Path:
    """Where ``target`` is written first: ``.NAME.modetune-staging`` (a file keeps its suffix last, so
    writers that choose a format by it still do)."""
    return target.with_name(f".{target.name}{STAGING}{'' if folder else target.suffix}")


def clean_leftovers(target: Path) -> None:
    """Remove (and name, on stderr) a staging path or a retired output that a killed run left beside ``target``."""
    for leftover in (stage_path(target), stage_path(target, folder=False), target.with_name(f".{target.name}{RETIRED}")):
        suffix = RETIRED if leftover.name.endswith(RETIRED) else STAGING
        if leftover.exists() or leftover.is_symlink():
            if suffix == RETIRED and not (target.exists() or target.is_symlink()):
                leftover.rename(target)  # killed between the two renames: the old output comes back
                print(f"[modetune] restored {target} from {leftover.name} (a run was killed while replacing it)",
                      file=sys.stderr)
                continue
            _remove(leftover)
            print(f"[modetune] removed {leftover}, the partial output of an interrupted run", file=sys.stderr)


@contextmanager
def staged(target: str | Path, folder: bool = True) -> Iterator[Path]:
    """Yield the staging path for ``target`` (an empty folder when ``folder``, else a file path whose
    parent exists); on success it replaces ``target``, on any exception (an interrupt too) it is
    removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    stage = stage_path(target, folder)
    if folder:
        stage.mkdir()
    try:
        yield stage
    except BaseException:
        _remove(stage)
        raise
    commit(stage, target)


def commit(stage: Path, target: Path) -> None:
    """Put the finished ``stage`` in ``target``'s place: one rename for a file; for a folder, the
    old one is renamed aside first and removed after (:func:`clean_leftovers` restores it if a kill
    falls between the two renames)."""
    retired = target.with_name(f".{target.name}{RETIRED}")
    if stage.is_dir() and (target.exists() or target.is_symlink()):  # a folder cannot be replaced in one rename
        os.replace(target, retired)
    os.replace(stage, target)
    _remove(retired)


def check_outputs(targets: Iterable[str | Path], inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
                  flag: str = "--output") -> None:
    """:func:`check_output` for each file of a command that writes several (all checked before any is written)."""
    inputs = list(inputs)
    for target in targets:
        check_output(target, inputs, overwrite, flag)


def write_text(target: str | Path, text: str) -> None:
    """Write a text file through :func:`staged`: a kill never leaves it half written."""
    with staged(target, folder=False) as stage:
        stage.write_text(text, encoding="utf-8")
