"""The datasets that ship inside the package (``modetune/data/files``), and their manifest.

- ``llm-adapters/<Name>/test.json``: the 14 evaluation sets in LLM-Adapters' format, and
  ``<Name>/train.json`` for ARC-Challenge, ARC-Easy, boolq and openbookqa (Apache-2.0,
  ``llm-adapters/LICENSE``; each dataset keeps its own licence).
- ``math-split/``: the clean arithmetic split (:mod:`modetune.data.split`): ``train.json``
  and the test halves of the seven arithmetic sets.

``MANIFEST.json`` records, per file, its record count and SHA-256; ``PROVENANCE.md`` says
where each file comes from. Training sources name a shipped file as ``packaged:<path>``,
e.g. ``packaged:math-split/train.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..utils.errors import DataError

DATA_ROOT = Path(__file__).resolve().parent / "files"
LLM_ADAPTERS = DATA_ROOT / "llm-adapters"
MATH_SPLIT = DATA_ROOT / "math-split"
MANIFEST = DATA_ROOT / "MANIFEST.json"
PREFIX = "packaged:"


def packaged_path(spec: str) -> Path:
    """``packaged:math-split/train.json`` (or the bare relative path) -> the shipped file's path."""
    relative = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    path = (DATA_ROOT / relative).resolve()
    if DATA_ROOT not in path.parents or not path.is_file():
        shipped = sorted(str(p.relative_to(DATA_ROOT)) for p in DATA_ROOT.rglob("*.json") if p != MANIFEST)
        raise DataError(f"{spec}: no such packaged file; the packaged files are: {', '.join(shipped)}.")
    return path


def manifest() -> dict[str, dict]:
    """``{relative path: {"records": n, "sha256": hex}}`` for every shipped data file, computed now."""
    out = {}
    for path in sorted(DATA_ROOT.rglob("*.json")):
        if path == MANIFEST:
            continue
        raw = path.read_bytes()
        out[str(path.relative_to(DATA_ROOT))] = {"records": len(json.loads(raw)), "sha256": hashlib.sha256(raw).hexdigest()}
    return out


def check_manifest() -> list[str]:
    """The shipped files whose content differs from ``MANIFEST.json`` (or that are missing or extra)."""
    recorded, found = json.loads(MANIFEST.read_text()), manifest()
    return sorted(name for name in recorded.keys() | found.keys() if recorded.get(name) != found.get(name))


def format_listing() -> str:
    """The packaged data files with their record counts (from ``MANIFEST.json``): ``modetune data list``."""
    recorded = json.loads(MANIFEST.read_text())
    width = max(len(PREFIX + name) for name in recorded)
    lines = [f"{PREFIX + name:<{width}}  {entry['records']:>6,}" for name, entry in sorted(recorded.items())]
    return "\n".join([f"{'file':<{width}}  records", *lines, f"({len(recorded)} files in {DATA_ROOT})"])


if __name__ == "__main__":  # maintainers: python -m modetune.data.packaged  (rewrites MANIFEST.json)
    MANIFEST.write_text(json.dumps(manifest(), indent=1) + "\n")
    print(f"wrote {MANIFEST}")
