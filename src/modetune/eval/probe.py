"""`modetune probe`: a late-layer ensemble's headroom on labelled tokens, measured before (or after) training.

For a base model, a LoRA adapter or a MoD adapter and labelled records (teacher forcing):
each member's cross-entropy (the logit lens of the last ``k`` layers through its norm: the
MoD adapter's member norms, else the final norm), the model's own ensemble (MoD), the
per-token oracle pick and oracle convex mix (upper bounds: they see the label), the best single
global mix, how often and by how much an earlier member beats the final one, how often the
trained router's largest weight falls on the oracle's member, and the achievable part: a router
of the method's form fitted on half of the records and scored on the other half. The maths is
in :mod:`modetune.mod.headroom`; this module loads, collects, and writes ``probe.json``, ``probe.md``
and ``probe.png``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..loading import ModelSource
from ..mod.headroom import MemberLogits, exact_mix_ce, fit_linear_router, global_mix, member_ce, oracle_mix
from ..utils.config import SEED_MAX, Config
from ..utils.errors import DataError
from ..utils.outputs import check_output, data_paths, staged
from ..utils.plotting import pyplot
from ..utils.progress import progress_bar
from ..utils.prompts import AUTO, resolve_style


@dataclass
class ProbeConfig(Config):
    """Every choice of a probe; each field is a ``modetune probe`` flag."""

    what: ClassVar[str] = "probe"
    renamed: ClassVar[dict[str, str]] = {"k": "num_members", "router_lr": "fit_lr", "router_max_epochs": "fit_max_epochs",
                                         "router_patience": "fit_patience"}  # probe.json before 2026-12-04

    source: ModelSource = field(default_factory=ModelSource, metadata={
        "help": "the model and adapter probed: a MoD adapter (its member norms and router) or a LoRA-only one; "
                "none: the base model"})
    data: str = field(default="packaged:math-split/train.json", metadata={
        "help": "labelled records (as for modetune train --data); use records the model was not trained on"})
    records: int = field(default=64, metadata={"min": 4, "help": "records drawn (seeded) from data"})
    num_members: int = field(default=3, metadata={"min": 1,
        "help": "members probed (the last N layers) when the adapter is not a MoD adapter (a MoD adapter: its own k)"})
    cutoff_len: int = field(default=256, metadata={"min": 1, "help": "tokens per record after truncation"})
    prompt_style: str = field(default="auto", metadata={
        "help": "prompt template: auto (the adapter's training style, else alpaca), alpaca, llm-adapters or chat"})
    seed: int = field(default=0, metadata={
        "min": 0, "max": SEED_MAX, "help": "seed of the record draw, the fit/score split and the router fit"})
    oracle_steps: int = field(default=12, metadata={"min": 1, "help": "projected-Newton steps of the per-token oracle mix"})
    candidates: int = field(default=1024, metadata={"min": 1,
        "help": "vocabulary entries per token the optimisers search over (plus a tail bound; reported numbers are "
                "re-scored on the full vocabulary)"})
    fit_lr: float = field(default=1e-3, metadata={"gt": 0, "help": "Adam learning rate of the router the probe fits"})
    fit_max_epochs: int = field(default=60, metadata={"min": 1, "help": "epochs of the router fit at most"})
    fit_patience: int = field(default=4, metadata={"min": 1,
        "help": "stop the router fit after N epochs without a better validation CE"})
    output: str = field(default="runs/probe", metadata={"help": "folder for probe.json, probe.md and probe.png"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing output, once the new one is complete (off: refuse it)"})

    def validate(self) -> None:
        if self.prompt_style != AUTO:
            resolve_style(self.prompt_style, None)  # refuses an unknown style


def _members_of(model, k: int):
    """``(decoder layers, member norms, head spec, layer indices, is_mod)`` of a MoD or plain (peft) model."""
    from ..mod.losses import HeadSpec
    from ..mod.model import MoDModel
    from ..mod.surgery import check_members, find_parts

    if isinstance(model, MoDModel):
        return model.parts.layers, model.member_norms(), model.head_spec(), model.member_layers, True
    parts = find_parts(model)
    check_members(k, parts.num_layers)
    head = HeadSpec(parts.head.weight, parts.head.bias, parts.softcap)
    return parts.layers, [parts.final_norm] * k, head, list(range(parts.num_layers - k, parts.num_layers)), False


def collect(model, rows: list[dict], k: int, candidates: int | None = None, progress: bool = False) -> dict:
    """Per labelled token (teacher forcing, one record at a time): member logits, the final
    normalised state ``x``, the record index, and for MoD the ensemble CE and router weights
    (``progress``: a bar over the records)."""
    layers, norms, head, indices, is_mod = _members_of(model, k)
    stash: dict[int, torch.Tensor] = {}
    hooks = [layers[i].register_forward_hook(
        lambda module, args, out, i=i: stash.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i in indices]
    parts, zs_all, targets, ens, weights, record = [], [], [], [], [], []
    start = time.perf_counter()
    try:
        with torch.no_grad(), progress_bar(None, "probe: member states", progress, len(rows), "record") as bar:
            for r, row in enumerate(rows):
                ids = torch.tensor([row["input_ids"]], device=model.device)
                labels = torch.tensor(row["labels"][1:], device=model.device)
                out = model(input_ids=ids) if is_mod else model(input_ids=ids, logits_to_keep=1)  # members via hooks
                pos = (labels != -100).nonzero().squeeze(-1)
                target = labels[pos]
                zs = [norm(stash[i][0, pos]) for norm, i in zip(norms, indices)]
                logits = torch.stack([head.logits(z) for z in zs], 1)
                parts.append(MemberLogits.from_logits(logits.cpu(), target.cpu(), candidates))
                zs_all.append(torch.stack(zs, 1).float().cpu())
                targets.append(target.cpu())
                record += [r] * len(pos)
                if is_mod:
                    ens.append(torch.nn.functional.cross_entropy(out.logits[0, pos].float(), target, reduction="none")
                               .cpu())
                    weights.append(out.router_weights[0, pos].float().cpu())
                bar.update()
    finally:
        for hook in hooks:
            hook.remove()
    z, target = torch.cat(zs_all), torch.cat(targets)

    def exact(tokens: torch.Tensor) -> MemberLogits:
        with torch.no_grad():
            full = torch.stack([head.logits(z[tokens, i].to(head.weight)) for i in range(len(indices))], 1)
        return MemberLogits.from_logits(full.cpu(), target[tokens])

    return {"members": MemberLogits.cat(parts), "x": z[:, -1], "record": torch.tensor(record), "exact": exact,
            "ensemble_ce": torch.cat(ens) if ens else None, "router_weights": torch.cat(weights) if weights else None,
            "seconds": time.perf_counter() - start}


def headroom(data: dict, oracle_steps: int = 12) -> dict:
    """The probe's numbers over every collected token (see :mod:`modetune.mod.headroom` for the formulas);
    the mixes found on the candidate surrogate are re-scored on the full vocabulary."""
    members = data["members"]
    ce = member_ce(members)
    k, final = members.k, ce[:, -1]
    best, pick = ce.min(-1)
    _, mix_w = oracle_mix(members, oracle_steps)
    _, global_w = global_mix(members, data["exact"])
    exact = exact_mix_ce(data["exact"], torch.arange(len(members)), {"oracle": mix_w, "global": global_w})
    mix_ce = torch.minimum(exact["oracle"], best)  # a vertex is a convex mix too
    global_ce = min(float(exact["global"].mean()), float(ce.mean(0).min()))
    earlier = pick != k - 1
    result = {
        "tokens": len(members), "k": k, "member_ce": ce.mean(0).tolist(),
        "ensemble_ce": None if data["ensemble_ce"] is None else float(data["ensemble_ce"].mean()),
        "oracle_pick_ce": float(best.mean()),
        "oracle_pick_share": torch.bincount(pick, minlength=k).div(len(pick)).tolist(),
        "oracle_mix_ce": float(mix_ce.mean()), "oracle_mix_mean_weights": mix_w.mean(0).tolist(),
        "global_mix_ce": global_ce, "global_mix_weights": global_w.tolist(),
        "earlier_beats_final_share": float(earlier.float().mean()),
        "earlier_beats_final_gain_on_those": float((final - best)[earlier].mean()) if earlier.any() else 0.0,
        "earlier_beats_final_gain_per_token": float((final - best).mean()),
    }
    if data["router_weights"] is not None:
        router = data["router_weights"]
        result["router_mean_weights"] = router.mean(0).tolist()
        result["router_on_oracle_member_share"] = float((router.argmax(-1) == pick).float().mean())
    return result


def fitted_router(data: dict, config: ProbeConfig) -> dict:
    """A router of the method's form, starting at the best global mix of its half (``W = 0``,
    ``b = log w``), fitted on half of the records (a fifth of that half for early stopping)
    and scored on the other half, beside the final member, a global mix fitted
    on the same half, and the oracle mix, all on the scoring half."""
    records = sorted(set(data["record"].tolist()))
    random.Random(config.seed).shuffle(records)
    half = len(records) // 2
    val_n = max(1, half // 5)
    groups = {"fit": records[val_n:half], "val": records[:val_n], "score": records[half:]}
    rows = {name: torch.isin(data["record"], torch.tensor(ids)).nonzero().squeeze(-1) for name, ids in groups.items()}
    members = {name: data["members"].select(r) for name, r in rows.items()}
    x = {name: data["x"][r] for name, r in rows.items()}
    start = time.perf_counter()
    fit_rows = torch.cat([rows["fit"], rows["val"]])
    _, global_w = global_mix(MemberLogits.cat([members["fit"], members["val"]]),
                             lambda tokens: data["exact"](fit_rows[tokens]))
    router, history = fit_linear_router(x["fit"], members["fit"], x["val"], members["val"], lr=config.fit_lr,
                                        max_epochs=config.fit_max_epochs, patience=config.fit_patience,
                                        seed=config.seed, init=global_w)
    seconds = time.perf_counter() - start
    score = members["score"]
    _, oracle_w = oracle_mix(score, config.oracle_steps)
    with torch.no_grad():
        weights = router(x["score"])
    exact = exact_mix_ce(data["exact"], rows["score"], {"router": weights, "global": global_w, "oracle": oracle_w})
    member = member_ce(score)
    result = {"records": {name: len(ids) for name, ids in groups.items()},
              "tokens": {name: len(m) for name, m in members.items()},
              "final_ce": float(member[:, -1].mean()), "global_mix_ce": float(exact["global"].mean()),
              "router_ce": float(exact["router"].mean()),
              "oracle_mix_ce": float(torch.minimum(exact["oracle"], member.min(-1).values).mean()),
              "router_mean_weights": weights.mean(0).tolist(), "epochs": len(history) - 1,
              "val_history": history, "seconds": seconds}
    room = result["final_ce"] - result["oracle_mix_ce"]
    result["share_of_oracle_room"] = (result["final_ce"] - result["router_ce"]) / room if room > 0 else None
    return result


def probe_rows(config: ProbeConfig, tokenizer) -> list[dict]:
    """``config.records`` records drawn (seeded) from ``config.data``, tokenised with the prompt masked."""
    from ..data import load_training_records, tokenize_records

    records = load_training_records(config.data)
    if len(records) > config.records:
        chosen = sorted(random.Random(config.seed).sample(range(len(records)), config.records))
        records = [records[i] for i in chosen]
    style = resolve_style(config.prompt_style, config.source.adapter)  # auto: the adapter's training style
    rows = tokenize_records(records, tokenizer, config.cutoff_len, False, style)
    if len(rows) < 4:  # the fit, validation and scoring parts would be empty: NaN results
        raise DataError(f"probe needs at least 4 records with a target; {config.data} gives {len(rows)}.")
    return rows


def run_probe(config: ProbeConfig, progress: bool = True) -> dict:
    """Load, collect, measure; write ``probe.json``, ``probe.md`` and ``probe.png`` into ``config.output``.
    ``progress``: a line while the model loads, a bar over the records' member states, then one over the stages."""
    source = config.source
    config = dataclasses.replace(config, prompt_style=resolve_style(config.prompt_style, source.adapter))  # recorded
    check_output(config.output, [source.adapter, source.model, *data_paths(config.data)], config.overwrite)
    start = time.perf_counter()
    device = source.device or ("cuda" if torch.cuda.is_available() else None)
    if progress:
        print(f"[modetune probe] loading {source.model}{' + ' + source.adapter if source.adapter else ''}",
              flush=True)
    model, tokenizer, info = dataclasses.replace(source, device=device).load()
    tokenizer.padding_side = "right"
    rows = probe_rows(config, tokenizer)
    data = collect(model, rows, config.num_members, config.candidates, progress)
    with progress_bar(None, "probe: oracle and global mixes", progress, 3, "stage") as stages:
        measured = headroom(data, config.oracle_steps)
        stages.update()
        stages.set_description("probe: fitting a router on half of the records")
        fitted = fitted_router(data, config)
        stages.update()
        stages.set_description("probe: writing probe.json, probe.md, probe.png")
        result = {"config": config.to_dict(), "kind": info["kind"], "records": len(rows), **measured,
                  "fitted_router": fitted}
        result["collect_seconds"] = data["seconds"]
        result["seconds"] = time.perf_counter() - start
        with staged(config.output) as output:
            (output / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
            (output / "probe.md").write_text(probe_markdown(result) + "\n")
            plot_probe(result, output / "probe.png")
        stages.update()
    return result


def probe_markdown(r: dict) -> str:
    """The probe's table (nats per labelled token), oracle rows marked as upper bounds."""
    k, c = r["k"], r["config"]
    lines = [f"# Probe: {c['model']}{' + ' + c['adapter'] if c['adapter'] else ''} ({r['kind']})", "",
             f"{r['records']} records of `{c['data']}` (seed {c['seed']}), {r['tokens']} labelled tokens, teacher "
             f"forcing; members: the last {k} layers' logit lens through their norms. Rows marked *oracle* see "
             "the label: they are upper bounds, not achievable numbers.", "",
             "| all tokens | CE (nats/token) |", "|---|---|"]
    lines += [f"| member {i} (layer N-{k - 1 - i}) | {ce:.3f} |" for i, ce in enumerate(r["member_ce"])]
    if r["ensemble_ce"] is not None:
        lines.append(f"| the model's own ensemble (router mean weights {_fmt(r['router_mean_weights'])}) | "
                     f"{r['ensemble_ce']:.3f} |")
    lines += [f"| best single global mix {_fmt(r['global_mix_weights'])} | {r['global_mix_ce']:.3f} |",
              f"| *oracle* per-token best member (shares {_fmt(r['oracle_pick_share'])}) | {r['oracle_pick_ce']:.3f} |",
              f"| *oracle* per-token convex mix of logits | {r['oracle_mix_ce']:.3f} |", "",
              f"An earlier member beats the final one on {100 * r['earlier_beats_final_share']:.1f}% of tokens, by "
              f"{r['earlier_beats_final_gain_on_those']:.3f} nats on those ({r['earlier_beats_final_gain_per_token']:.3f}"
              " per token over all tokens)."]
    if "router_on_oracle_member_share" in r:
        lines.append(f"The trained router's largest weight falls on the oracle's member on "
                     f"{100 * r['router_on_oracle_member_share']:.1f}% of tokens.")
    f = r["fitted_router"]
    lines += ["", f"Achievable: a router `softmax(x̃ W + b)` (x̃ the standardised final normalised state; W = 0 and b "
              "at the best global mix to start) fitted on "
              f"{f['records']['fit']} records ({f['tokens']['fit']} tokens; {f['records']['val']} more for early "
              f"stopping, {f['epochs']} epochs) and scored on {f['records']['score']} other records "
              f"({f['tokens']['score']} tokens):", "", "| scoring half | CE (nats/token) |", "|---|---|",
              f"| final member | {f['final_ce']:.3f} |",
              f"| global mix fitted on the other half | {f['global_mix_ce']:.3f} |",
              f"| fitted router (mean weights {_fmt(f['router_mean_weights'])}) | {f['router_ce']:.3f} |",
              f"| *oracle* per-token convex mix | {f['oracle_mix_ce']:.3f} |", ""]
    if f["share_of_oracle_room"] is not None:
        lines.append(f"The fitted router captures {100 * f['share_of_oracle_room']:.1f}% of the oracle's room "
                     "(final - router) / (final - oracle mix) on the scoring half.")
    return "\n".join(lines)


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def plot_probe(r: dict, path: Path) -> None:
    """Bar chart of the probe's cross-entropies, oracle bars hatched."""
    plt = pyplot()
    bars = [(f"member {i}", ce, False) for i, ce in enumerate(r["member_ce"])]
    if r["ensemble_ce"] is not None:
        bars.append(("own ensemble", r["ensemble_ce"], False))
    f = r["fitted_router"]
    bars += [("global mix", r["global_mix_ce"], False), ("oracle pick", r["oracle_pick_ce"], True),
             ("oracle mix", r["oracle_mix_ce"], True), ("fitted router\n(scoring half)", f["router_ce"], False),
             ("final member\n(scoring half)", f["final_ce"], False)]
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (_, value, oracle) in enumerate(bars):
        ax.bar(i, value, color="lightgray" if oracle else "tab:blue", hatch="//" if oracle else None)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("cross-entropy, nats / token")
    ax.set_title("late-layer ensemble headroom (hatched: oracle, sees the label)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
