"""The study table of ``modetune probe`` results: each arm's runs' probes side by side."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..utils.stats import over_seeds
from .plan import arm_of


def probe_rows(results: list[dict], root: Path) -> list[str]:
    """The probe of each run (``<run>/probe/probe.json``) per arm, the base model's
    (``probe-base/``) first: :func:`arm_table`."""
    rows = [("base model (untrained)", [json.loads(p.read_text())])
            for p in [root / "probe-base" / "probe.json"] if p.exists()]
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r.get("probe"):
            groups.setdefault(arm_of(r["name"]), []).append(r["probe"])
    return arm_table(rows + list(groups.items()))




def arm_table(rows: list[tuple[str, list[dict]]]) -> list[str]:
    """Probes (``probe.json`` dicts) grouped by arm, as a markdown section: means over the arm's
    runs of the final member's CE, the trained ensemble's CE, the label-aware oracle mix (an upper
    bound), the share of the oracle's room ``(final - ensemble) / (final - oracle mix)`` the
    trained router captures, and the same share for a router fitted on the frozen members (half of
    the records, scored on the other half); the ensemble's gain over its final member with a 95%
    t-interval over the runs (seeds). Empty when there is no probe."""
    if not rows:
        return []
    first = rows[0][1][0]

    def cell(values: list[float | None], digits: int = 3, pct: bool = False) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        scale, unit = (100, "%") if pct else (1, "")
        text = f"{scale * statistics.mean(values):.{digits}f}{unit}"
        return text + (f" ± {scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")

    def share(p: dict) -> float | None:
        final, room = p["member_ce"][-1], p["member_ce"][-1] - p["oracle_mix_ce"]
        return None if p["ensemble_ce"] is None or room <= 0 else (final - p["ensemble_ce"]) / room

    lines = ["## Headroom and the routers (`modetune probe`)", "",
             f"Each run's adapter probed on {first['records']} records of `{Path(first['config']['data']).name}` "
             f"(seed {first['config']['seed']}; {first['tokens']} labelled tokens), teacher forcing, "
             "nats per token; mean ± standard deviation over the arm's runs. The *oracle* mix sees the label: an upper "
             "bound, not an achievable number. The trained router's share of the oracle's room is (final - ensemble) / "
             "(final - oracle mix); the fitted router is one of the method's form fitted on the frozen members of half "
             "of the records and scored on the other half (its share on that half). Per run: `<run>/probe/probe.md`.",
             "", "| arm | runs | final member | own ensemble | ensemble gain over final [95% t-CI over runs] | "
             "*oracle* mix | trained router's share of room | router top on oracle's member | fitted router: final -> "
             "router (scoring half) | fitted router's share |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, probes in rows:
        gains = [p["member_ce"][-1] - p["ensemble_ce"] for p in probes if p["ensemble_ce"] is not None]
        if len(gains) >= 2:
            gain = over_seeds(gains, [0.0] * len(gains))
            gain_cell = f"{gain['mean']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}]"
        else:
            gain_cell = f"{gains[0]:+.4f}" if gains else "-"
        fitted = [p["fitted_router"] for p in probes]
        lines.append(" | ".join([
            f"| {name}", str(len(probes)), cell([p["member_ce"][-1] for p in probes]),
            cell([p["ensemble_ce"] for p in probes]), gain_cell, cell([p["oracle_mix_ce"] for p in probes]),
            cell([share(p) for p in probes], 1, True),
            cell([p.get("router_on_oracle_member_share") for p in probes], 1, True),
            f"{cell([f['final_ce'] for f in fitted])} -> {cell([f['router_ce'] for f in fitted])}",
            cell([f["share_of_oracle_room"] for f in fitted], 1, True)]) + " |")
    return lines + [""]
