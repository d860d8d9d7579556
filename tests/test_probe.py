"""`modetune probe` (issue 11.4): the ensemble-headroom maths on synthetic logits, and the command on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modetune.cli import main
from modetune.mod.headroom import (
    MemberLogits,
    exact_mix_ce,
    fit_linear_router,
    global_mix,
    member_ce,
    mix_ce,
    mix_ce_mean,
    oracle_mix,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _synthetic(n=120, k=3, vocab=200, seed=0):
    """Members that are noisy copies of a shared signal, each better on a different part of the tokens."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (n,), generator=g)
    base = torch.randn(n, vocab, generator=g)
    logits = torch.stack([base + 2.0 * torch.randn(n, vocab, generator=g) for _ in range(k)], 1)
    good = torch.randint(0, k, (n,), generator=g)  # the member that sees the label on each token
    logits[torch.arange(n), good, labels] += 4.0
    logits[:, :, labels] += 1.0
    return logits, labels


def test_mix_ce_and_its_gradient_are_the_cross_entropy_of_the_logit_mix():
    logits, labels = _synthetic(n=20)
    members = MemberLogits.from_logits(logits, labels)
    w = torch.softmax(torch.randn(20, 3), -1).requires_grad_(True)
    reference = torch.nn.functional.cross_entropy(torch.einsum("nk,nkv->nv", w, logits), labels, reduction="none")
    ce, grad = mix_ce(members.logits, members.label, w.detach(), grad=True)
    torch.testing.assert_close(ce, reference.detach(), rtol=1e-5, atol=1e-5)
    reference.sum().backward()
    torch.testing.assert_close(grad, w.grad, rtol=1e-4, atol=1e-4)


def test_the_candidate_surrogate_is_exact_at_the_members_and_an_upper_bound_between():
    logits, labels = _synthetic()
    full, small = MemberLogits.from_logits(logits, labels), MemberLogits.from_logits(logits, labels, candidates=16)
    assert small.logits.shape[-1] == 17  # 16 candidates and the tail column
    torch.testing.assert_close(member_ce(small), member_ce(full), rtol=1e-5, atol=1e-5)
    w = torch.softmax(torch.randn(len(full), 3), -1)
    surrogate, exact = mix_ce(small.logits, small.label, w)[0], mix_ce(full.logits, full.label, w)[0]
    assert (surrogate >= exact - 1e-5).all() and (surrogate - exact).max() > 1e-4
    rescored = exact_mix_ce(lambda tokens: full.select(tokens), torch.arange(len(full)), {"w": w})["w"]
    torch.testing.assert_close(rescored, exact)


def test_oracles_and_global_mix_are_ordered_and_optimal():
    logits, labels = _synthetic()
    members = MemberLogits.from_logits(logits, labels)
    each = member_ce(members)
    pick = each.min(-1).values
    mix, weights = oracle_mix(members)
    assert (mix <= pick + 1e-6).all() and (mix < pick - 1e-3).any()  # oracle mix <= oracle pick, often below
    assert pick.mean() <= each.mean(0).min()  # oracle pick <= every member
    assert torch.allclose(weights.sum(-1), torch.ones(len(members))) and (weights >= 0).all()
    glob, w = global_mix(members)
    assert glob <= float(each.mean(0).min()) + 1e-6  # the global mix <= every member's CE
    assert float(mix.mean()) <= glob  # a per-token mix can do no worse than one mix for all
    assert glob == pytest.approx(mix_ce_mean(members, w), abs=1e-5)
    # optimal: no point of a fine grid over the simplex beats them (k = 3)
    grid = torch.tensor([(a / 30, b / 30, 1 - (a + b) / 30) for a in range(31) for b in range(31 - a)])
    best_grid = min(mix_ce_mean(members, g) for g in grid)
    assert glob <= best_grid + 1e-4
    token_grid = torch.stack([mix_ce(members.logits, members.label, g)[0] for g in grid], 1).min(-1).values
    assert (mix <= token_grid + 1e-5).all()


def _skewed(n=400, vocab=300, seed=3):
    """A strong final member and a weaker one that knows other tokens: the best global mix is
    interior but close to the final vertex (the shape of a trained model's late layers)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (n,), generator=g)
    logits = torch.randn(n, 3, vocab, generator=g) * 1.5
    logits[torch.arange(n), 2, labels] += 3.0  # the final member usually knows the label
    some = torch.rand(n, generator=g) < 0.3
    logits[torch.arange(n)[some], 0, labels[some]] += 3.0  # member 0 knows some tokens too
    return logits, labels


def test_global_mix_is_the_exact_optimum_by_kkt_and_grid_when_it_is_interior():
    """The full-vocabulary solver meets the KKT conditions of the convex problem and no point of
    a fine grid beats it, on a case whose optimum is interior, where the candidate surrogate's
    own minimiser is pulled towards the final vertex."""
    logits, labels = _skewed()
    full, small = MemberLogits.from_logits(logits, labels), MemberLogits.from_logits(logits, labels, candidates=8)
    exact = lambda tokens: full.select(tokens)  # noqa: E731
    surrogate_ce, surrogate_w = global_mix(small)
    ce, w = global_mix(small, exact)
    assert ce == pytest.approx(mix_ce_mean(full, w), abs=1e-6)
    # KKT on the simplex: equal partial derivatives on the support, none smaller off it
    _, grad = mix_ce(full.logits, full.label, w, grad=True)
    g = grad.mean(0)
    support = w > 1e-6
    assert support.sum() >= 2 and 0.001 < float(w[0]) < 0.5  # interior, the case the old solver missed
    mu = g[support].mean()
    assert (g[support] - mu).abs().max() < 1e-4 and (g[~support] >= mu - 1e-4).all()
    # a grid of step 1/400 around the whole simplex finds nothing lower
    steps = 400
    grid = torch.tensor([(a / steps, b / steps, 1 - (a + b) / steps) for a in range(0, steps + 1, 4)
                         for b in range(0, steps + 1 - a, 4)])
    fine = [w.double() + torch.tensor([a, b, -a - b], dtype=torch.float64) / steps
            for a in range(-4, 5) for b in range(-4, 5)]
    grid = torch.cat([grid, torch.stack([f.float() for f in fine if (f >= 0).all()])])
    assert ce <= min(mix_ce_mean(full, point) for point in grid) + 1e-7
    assert ce < mix_ce_mean(full, surrogate_w) - 1e-4  # the surrogate's own optimum is measurably worse
    assert surrogate_ce >= ce


def test_fitted_router_learns_a_feature_that_names_the_good_member():
    logits, labels = _synthetic(n=600, seed=1)
    members = MemberLogits.from_logits(logits, labels)
    good = (logits[torch.arange(600), :, labels]).argmax(-1)  # which member was given the label's boost
    x = torch.nn.functional.one_hot(good, 3).float() + 0.1 * torch.randn(600, 3)
    fit, val, score = torch.arange(0, 300), torch.arange(300, 400), torch.arange(400, 600)
    router, history = fit_linear_router(x[fit], members.select(fit), x[val], members.select(val), lr=5e-2,
                                        max_epochs=40, patience=5)
    assert all(math.isfinite(h) for h in history) and min(history) < history[0]
    scored = mix_ce_mean(members.select(score), router(x[score]))
    assert math.isfinite(scored) and scored < float(member_ce(members.select(score)).mean(0).min())


@pytest.mark.slow
def test_probe_command_on_a_tiny_mod_adapter(tiny_model_dir, tmp_path, capsys):
    from modetune import MoDConfig, get_mod_model
    from modetune.utils.models import load_model
    from tiny import perturb

    adapter = tmp_path / "mod"
    perturb(get_mod_model(load_model(str(tiny_model_dir))[0], MoDConfig(router_init="uniform"))).save_pretrained(adapter)
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--data", "builtin:arithmetic:30",
                 "--records", "6", "--candidates", "64", "--oracle-steps", "5", "--fit-max-epochs", "3",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "*oracle* per-token convex mix" in printed and "the model's own ensemble" in printed
    assert {p.name for p in out.iterdir()} >= {"probe.json", "probe.md", "probe.png"}
    r = json.loads((out / "probe.json").read_text())
    assert r["kind"] == "mod" and r["records"] == 6 and len(r["member_ce"]) == 3
    # the numbers recomputed independently: each member forced through the model's own forward pass
    # (its norm and the shared head), on the same seeded records, CE pooled over the labelled tokens
    from modetune.eval.members import forced_member
    from modetune.eval.probe import ProbeConfig, probe_rows
    from modetune.loading import load_source

    model, tokenizer, _ = load_source(str(tiny_model_dir), str(adapter))
    rows = probe_rows(ProbeConfig.from_dict(dict(model=str(tiny_model_dir), data="builtin:arithmetic:30", records=6)),
                      tokenizer)

    def pooled_ce(member):
        total, count = 0.0, 0
        with torch.no_grad(), forced_member(model, member):
            for row in rows:
                logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
                labels = torch.tensor(row["labels"][1:])
                keep = labels != -100
                total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
                count += int(keep.sum())
        return total / count, count

    members = [pooled_ce(i) for i in range(3)]
    assert r["tokens"] == members[0][1]
    assert r["member_ce"] == pytest.approx([ce for ce, _ in members], abs=1e-4)
    assert r["ensemble_ce"] == pytest.approx(pooled_ce(None)[0], abs=1e-4)
    assert r["global_mix_ce"] < min(r["member_ce"]) - 1e-4  # perturbed members: a mix beats each (convexity)
    f = r["fitted_router"]
    assert f["records"]["fit"] + f["records"]["val"] + f["records"]["score"] == 6
