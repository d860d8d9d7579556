"""Declared comparisons of a study's report: ``arm[:view]`` against ``arm[:view]``, paired over
seeds, and the follow-up's checks read from rows (reproduction, clipping, unseen equations).

A *view* is what of a run is scored: ``ensemble`` (``eval/``, the model as loaded) or ``final``
(``eval-final/``, the final member alone). Per seed ``s`` shared by both sides,
``d_s = acc(a, s) - acc(b, s)`` on the items both scored; the report gives the mean with its 95%
t-interval over seeds, the exact sign test over seeds, the MDE of a paired t-test (alpha 0.05,
power 0.8) at the observed spread, and the reading (interval above 0, below 0, or spanning it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..utils.stats import minimum_detectable_effect, over_seeds
from .spec import arm_of

EQUATION = re.compile(r"-?\d+(?:\.\d+)? [-+*/x] -?\d+(?:\.\d+)? = -?\d+(?:\.\d+)?")


def flags_of(result: dict, view: str) -> dict[tuple[str, str], bool]:
    """``{(dataset, item id): correct}`` of one run's view (empty when it was not scored)."""
    source = result.get("correct_final" if view == "final" else "correct") or {}
    return {(d, i): ok for d, items in source.items() for i, ok in items.items()}


def by_arm(results: list[dict]) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: result}}``."""
    arms: dict[str, dict[int, dict]] = {}
    for r in results:
        arms.setdefault(arm_of(r["name"]), {})[r["seed"]] = r
    return arms


def compare(results: list[dict], a: str, b: str, items: dict[int, set] | None = None) -> dict | None:
    """Side ``a`` vs side ``b`` (each ``arm`` or ``arm:final``) over their shared seeds, on the items
    both scored (and, per seed, only those in ``items[seed]`` when given); ``None`` when fewer than
    two seeds pair."""
    arms = by_arm(results)
    (arm_a, _, view_a), (arm_b, _, view_b) = a.partition(":"), b.partition(":")
    acc_a, acc_b, seeds, n_items = [], [], [], []
    for seed in sorted(set(arms.get(arm_a, {})) & set(arms.get(arm_b, {}))):
        fa, fb = flags_of(arms[arm_a][seed], view_a or "ensemble"), flags_of(arms[arm_b][seed], view_b or "ensemble")
        common = set(fa) & set(fb) & (items[seed] if items is not None else set(fa))
        if not common:
            continue
        acc_a.append(sum(fa[i] for i in common) / len(common))
        acc_b.append(sum(fb[i] for i in common) / len(common))
        seeds.append(seed)
        n_items.append(len(common))
    if len(seeds) < 2:
        return None
    d = over_seeds(acc_a, acc_b)
    reading = ("higher (interval above 0)" if d["low"] > 0 else "lower (interval below 0)" if d["high"] < 0
               else "no difference detected (interval spans 0)")
    return {**d, "seeds_list": seeds, "items": n_items, "mde": minimum_detectable_effect(d["sd"], d["seeds"]),
            "reading": reading, "acc_a": acc_a, "acc_b": acc_b}


def _row(label: str, a: str, b: str, c: dict) -> str:
    items = f"{min(c['items'])}" if min(c["items"]) == max(c["items"]) else f"{min(c['items'])}-{max(c['items'])}"
    mean_a, mean_b = sum(c["acc_a"]) / len(c["acc_a"]), sum(c["acc_b"]) / len(c["acc_b"])
    return (f"| {label} | `{a}` vs `{b}` | {', '.join(map(str, c['seeds_list']))} | {items} | "
            f"{100 * mean_a:.1f} / {100 * mean_b:.1f} | {100 * c['mean']:+.1f} [{100 * c['low']:+.1f}, "
            f"{100 * c['high']:+.1f}] | {c['n_pos']} / {c['n_neg']} | {c['sign_p']:.3f} | {100 * c['mde']:.1f} | "
            f"{c['reading']} |")


HEADER = ["| | comparison | seeds | items per seed | mean acc (%) a / b | Δ over seeds (pts) [95% t-CI] | "
          "seeds better / worse | sign p | MDE (pts) | reading |", "|---|---|---|---|---|---|---|---|---|---|"]


def comparison_rows(declared, results: list[dict], holm_family: tuple[str, ...] = (),
                    title: str = "Pre-registered comparisons (PLAN.md)") -> list[str]:
    """A study's declared comparisons ``(label, a, b)`` (``plan.Study.comparisons``); nothing when
    none pairs. ``holm_family``: labels whose first comparisons get a paired t-test p-value and
    Holm's adjustment over them, in a note below the table (once all of them pair)."""
    rows = [_row(label, a, b, c) for label, a, b in declared if (c := compare(results, a, b)) is not None]
    if not rows:
        return []
    lines = [f"## {title}", "",
             "Per seed, the accuracy of `a` minus that of `b` on the items both scored (`arm:final`: the final "
             "member alone, `eval-final/`); the mean with its 95% t-interval over seeds, the exact sign test over "
             "seeds, and the MDE at the observed spread. A comparison appears once two seeds pair; the decision "
             "rules read it only once all its planned runs have rows.", "", *HEADER, *rows, ""]
    return lines + _holm_note(declared, results, holm_family)


def _holm_note(declared, results: list[dict], family: tuple[str, ...]) -> list[str]:
    from ..utils.stats import holm, paired_t_p

    firsts = {label: (a, b) for label, a, b in reversed(declared) if label in family}
    tests = [(label, compare(results, *firsts[label])) for label in family if label in firsts]
    if not tests or any(c is None for _, c in tests):
        return []
    p = [paired_t_p(c["diffs"]) for _, c in tests]
    cells = ", ".join(f"{label} t-test p {raw:.3f}, Holm {adj:.3f}" for (label, _), raw, adj in zip(tests, p, holm(p)))
    return [f"Multiplicity (added after the study; its plan did not register a correction): paired t-tests over "
            f"seeds with Holm's adjustment over {', '.join(label for label, _ in tests)}: {cells}.", ""]


def final_member_rows(results: list[dict]) -> list[str]:
    """Per run scored both ways: the ensemble's and the final member's accuracy on the same items."""
    lines = []
    for r in results:
        ens, final = flags_of(r, "ensemble"), flags_of(r, "final")
        common = set(ens) & set(final)
        if common:
            a, b = sum(ens[i] for i in common) / len(common), sum(final[i] for i in common) / len(common)
            lines.append(f"| {r['name']} | {len(common)} | {100 * a:.1f} | {100 * b:.1f} | {100 * (b - a):+.1f} | "
                         f"{sum(ens[i] != final[i] for i in common)} |")
    if not lines:
        return []
    return ["## The final member alone", "", "Accuracy (%) of the ensemble (`eval/`) and of the final member alone "
            "(`eval-final/`: every token routed to layer N's own norm and the shared head: the plain model that "
            "merging LoRA gives) on the same items.", "",
            "| run | items | ensemble | final member | final - ensemble (pts) | items scored differently |",
            "|---|---|---|---|---|---|", *lines, ""]


def seen_items(results: list[dict], root: Path) -> dict[int, set]:
    """Per seed, the held-out items every worked equation of whose gold ``output`` occurs verbatim in
    the ``output`` of one of that seed's training records (PLAN.md's secondary analysis)."""
    from ..data import load_training_records, split_validation
    from ..eval.protocol import item_id

    held = sorted(root.glob("builtin-tn-test-*.json"))
    if not held:
        return {}
    tests = json.loads(held[0].read_text())
    config = json.loads((root / "experiment.json").read_text())["config"]
    seen: dict[int, set] = {}
    for seed in sorted({r["seed"] for r in results}):
        records = load_training_records(config["data"], config.get("max_records"), seed)
        train, _ = split_validation(records, config["val_size"], seed)
        text = "\n".join(r.get("output", "") for r in train)
        seen[seed] = {("builtin", item_id(t)) for t in tests
                      if (eqs := EQUATION.findall(t.get("output", ""))) and all(e in text for e in eqs)}
    return seen


def unseen_rows(declared, labels, results: list[dict], root: Path) -> list[str]:
    """The declared comparisons named in ``labels``, on each seed's items with no seen equation."""
    if not labels:
        return []
    seen = seen_items(results, root)
    if not seen:
        return []
    every = {key for r in results for key in flags_of(r, "ensemble")}
    unseen = {seed: every - items for seed, items in seen.items()}
    rows = [_row(label, a, b, c) for label, a, b in declared if label in labels
            and (c := compare(results, a, b, unseen)) is not None]
    counts = ", ".join(f"{seed}: {len(items)}" for seed, items in seen.items())
    return ["## Items with no seen equation (secondary)", "",
            f"Held-out items whose every worked equation occurs verbatim in the seed's training answers, per seed: "
            f"{counts}. The comparisons below leave them out.", "", *HEADER, *rows, ""]


def reproduction_rows(results: list[dict]) -> list[str]:
    """``<arm>_rerun-sN`` against the committed ``<arm>-sN``: logged losses and gradient norms step by
    step, and the scored responses item by item."""
    from ..eval.results import read_results

    named = {r["name"]: r for r in results}
    lines = []
    for r in results:
        arm, _, seed = r["name"].rpartition("-s")
        if not arm.endswith("_rerun") or f"{arm[:-6]}-s{seed}" not in named or not r.get("eval_dir"):
            continue
        old = named[f"{arm[:-6]}-s{seed}"]
        keys = ("loss", "grad_norm", "task_loss")
        steps = [(x.get("step"), [x.get(k) for k in keys]) for x in r["log"] if "loss" in x]
        old_steps = [(x.get("step"), [x.get(k) for k in keys]) for x in old["log"] if "loss" in x]
        same_steps = sum(a == b for a, b in zip(steps, old_steps))
        new_rows = {row["id"]: row for p in sorted(Path(r["eval_dir"]).glob("*.jsonl")) if ".member" not in p.name
                    for row in read_results(p)}
        old_rows = {row["id"]: row for p in sorted(Path(old["eval_dir"]).glob("*.jsonl")) if ".member" not in p.name
                    for row in read_results(p)}
        same = sum(new_rows[i]["response"] == old_rows[i]["response"] for i in set(new_rows) & set(old_rows))
        lines.append(f"| {r['name']} | {old['name']} | {same_steps} of {len(old_steps)} (of {len(steps)}) | "
                     f"{same} of {len(old_rows)} |")
    if not lines:
        return []
    return ["## Reproduction of committed runs (C6)", "",
            "Logged steps whose loss, gradient norm and task loss are bit-identical, and scored responses that are "
            "identical, text for text.", "", "| rerun | committed | identical steps | identical responses |",
            "|---|---|---|---|", *lines, ""]


def clip_rows(results: list[dict]) -> list[str]:
    """Per arm, the share of optimizer steps whose pre-clip norm exceeded 1.0: all parameters
    (``grad_norm``), LoRA (``grad_norm_lora``) and the MoD parameters (``grad_norm_mod``)."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(arm_of(r["name"]), []).extend(x for x in r["log"] if "grad_norm" in x)
    lines = []
    for arm, steps in groups.items():
        def share(key: str, steps: list[dict] = steps) -> str:
            values = [x[key] for x in steps if key in x]
            return f"{100 * sum(v > 1.0 for v in values) / len(values):.1f}" if values else "n/a"

        cells = [arm, str(len(steps)), share("grad_norm"), share("grad_norm_lora"), share("grad_norm_mod")]
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return []
    return ["## Clipping as it happened", "", "Share (%) of optimizer steps, over every run of the arm, whose pre-clip "
            "gradient norm exceeded max_grad_norm (1.0): of all trainable parameters together (what `global` "
            "clips), of LoRA alone and of the MoD parameters alone (logged since `clip_scope` exists; n/a for "
            "older runs).", "", "| arm | steps | all > 1 | LoRA > 1 | MoD > 1 |", "|---|---|---|---|---|", *lines, ""]
