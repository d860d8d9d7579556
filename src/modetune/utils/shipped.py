"""The configs installed with the package (``modetune/configs``; ``configs/`` in a clone links there).

Training and experiment YAML files, the accelerate FSDP2 launcher config and the DeepSpeed
ZeRO-3 config. ``--config`` takes a path or a shipped name (``paper_llama7b``,
``experiments/commonsense``); ``modetune config list`` / ``show NAME`` print them.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SUFFIXES = (".yaml", ".json")


def shipped_configs() -> dict[str, Path]:
    """Shipped config name (its path under ``configs/`` without the suffix) -> file."""
    files = sorted(path for path in CONFIG_DIR.rglob("*") if path.suffix in SUFFIXES)
    return {path.relative_to(CONFIG_DIR).with_suffix("").as_posix(): path for path in files}


def describe(path: Path) -> str:
    """The first comment line of a YAML config (its purpose), or the file type."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").rstrip(":")
        if line.strip():
            break
    return {"deepspeed_zero3": "DeepSpeed ZeRO-3 config for the HF Trainer (accelerate launch --use_deepspeed "
                               "--deepspeed_config_file; see docs/scaling.md)"}.get(
        path.stem, path.suffix.lstrip(".") + " config")


def config_file(name_or_path: str | Path) -> Path:
    """``name_or_path`` as a file: an existing path, else a shipped config's name (suffix optional)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.as_posix().removeprefix("configs/")
    for candidate in (name, str(Path(name).with_suffix(""))):
        if candidate in shipped:
            return shipped[candidate]
    raise FileNotFoundError(f"Config file not found: {name_or_path} (a path, or a shipped config: "
                            f"{', '.join(shipped)}; `modetune config list`).")
