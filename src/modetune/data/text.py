"""Question text as a key: the normalisation behind de-duplication, hash splits and contamination checks."""

from __future__ import annotations

import re


def normalise_text(text: str) -> str:
    """Lower-case ``text`` and keep only ``[a-z0-9]``: the key for de-duplication and hash splits."""
    return re.sub(r"[^a-z0-9]", "", text.lower())
