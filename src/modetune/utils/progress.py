"""One progress bar for every long loop (tqdm on stderr; off when not ``enabled``)."""

from __future__ import annotations


def progress_bar(items=None, desc: str = "", enabled: bool = True, total: int | None = None, unit: str = "item"):
    """A tqdm bar over ``items`` (or counting to ``total``), hidden when ``enabled`` is false."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, disable=not enabled, dynamic_ncols=True)
