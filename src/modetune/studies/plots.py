"""A study's figures: training curves per run (runs of one arm share a colour) and the
per-seed paired accuracy differences against ``lora_notk`` with their t-intervals."""

from __future__ import annotations

from pathlib import Path

from ..utils.plotting import pyplot
from ..utils.stats import t_interval
from .plan import arms_vs_lora
from .spec import arm_of


def plot_loss(results: list[dict], root: Path, filename: str) -> str | None:
    """Like with like: every run's task cross-entropy on one panel (MoD's ``task_loss``; a run
    without MoD logs only ``loss``, which is that cross-entropy), MoD's distillation terms and
    its mean router weights on their own panels. Runs of one arm share a colour."""
    def series(r: dict, key: str) -> list[tuple[int, float]]:
        return [(row["step"], row[key]) for row in r["log"] if key in row]

    task = [(r["name"], series(r, "task_loss") or series(r, "loss")) for r in results]
    if not any(points for _, points in task):
        return None

    def final_weight(r: dict) -> list[tuple[int, float]]:  # the last member's router_<i>
        keys = sorted({key for row in r["log"] for key in row if key.startswith("router_") and key[7:].isdigit()})
        return series(r, max(keys, key=lambda key: int(key[7:]))) if keys else []

    distill = [(r["name"], [(row["step"], sum(v for key, v in row.items() if key.startswith("distill_")))
                            for row in r["log"] if "distill_0" in row]) for r in results]
    panels = [("task cross-entropy (nats/token)", task), ("distillation KL, summed over members", distill),
              ("router weight on the final member", [(r["name"], final_weight(r)) for r in results])]
    return draw_panels(root, filename, panels, arm_of, width=5)


def draw_panels(root: Path, filename: str, panels: list[tuple[str, list]], group, width: float) -> str | None:
    """One figure of side-by-side panels ``(ylabel, [(run name, [(step, value)])])`` against the
    step; lines whose ``group(name)`` agree share a colour and one legend entry. Empty panels
    are left out; ``None`` when nothing is left."""
    panels = [(label, [(n, p) for n, p in lines if p]) for label, lines in panels]
    panels = [(label, lines) for label, lines in panels if lines]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 4), squeeze=False)
    groups = list(dict.fromkeys(group(name) for _, lines in panels for name, _ in lines))
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    for ax, (label, lines) in zip(axes[0], panels):
        seen = set()
        for name, points in lines:
            g = group(name)
            ax.plot([p[0] for p in points], [p[1] for p in points], color=colours[g], label=None if g in seen else g)
            seen.add(g)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / filename, dpi=100)
    plt.close(fig)
    return filename


def plot_series(results: list[dict], root: Path, key: str, ylabel: str, filename: str) -> str | None:
    """One panel of ``key`` against the step, a line and a legend entry per run."""
    series = [(r["name"], [(row["step"], row[key]) for row in r["log"] if key in row]) for r in results]
    return draw_panels(root, filename, [(ylabel, series)], lambda name: name, width=6)


def plot_paired(results: list[dict], root: Path, filename: str) -> str | None:
    """Per arm (with a ``lora_notk`` run of the same seed), each seed's accuracy difference to
    ``lora_notk`` on the items both scored (points), and the mean with its 95% t-interval over
    the seeds; ``None`` when no arm has two paired seeds."""
    def diff(r: dict, base: dict) -> float:  # points, on the items both scored
        pairs = [(flag, base["correct"][d][i]) for d, flags in r["correct"].items() for i, flag in flags.items()
                 if i in base["correct"].get(d, {})]
        return 100 * sum(a - b for a, b in pairs) / len(pairs)

    arms = {arm: [diff(r, base) for r, base in pairs]
            for arm, pairs in arms_vs_lora(results, lambda r: r.get("correct")).items() if len(pairs) >= 2}
    if not arms:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(arms), 4))
    for x, diffs in enumerate(arms.values()):
        mean, low, high = t_interval(diffs)
        ax.scatter([x - 0.12] * len(diffs), diffs, color="gray", s=14, label="one seed" if x == 0 else None)
        ax.errorbar([x + 0.12], [mean], yerr=[[mean - low], [high - mean]], fmt="o", color="C0", capsize=4,
                    label="mean, 95% t-interval over seeds" if x == 0 else None)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(arms)), [f"{arm}\n({len(d)} seeds)" for arm, d in arms.items()], fontsize=8)
    ax.set_ylabel("accuracy - lora_notk's, same seed (points)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / filename, dpi=100)
    plt.close(fig)
    return filename
