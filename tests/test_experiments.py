"""`modetune experiment`: study plans, smoke runs end to end, resume, statistics."""

from __future__ import annotations

import json
import time

import pytest

from modetune.cli import main
from modetune.experiments import STUDIES, ExperimentConfig, plan
from modetune.stats import accuracy_ci, mcnemar, paired_difference_ci, paired_over_seeds

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_mcnemar_exact_values():
    # 10 discordant pairs split 8 / 2: two-sided binomial p = 2 * P(X <= 2 | n=10, 1/2) = 112/1024
    a = [True] * 8 + [False] * 2 + [True] * 5
    b = [False] * 8 + [True] * 2 + [True] * 5
    only_b, only_a, p = mcnemar(a, b)
    assert (only_b, only_a) == (2, 8)
    assert p == pytest.approx(112 / 1024)
    assert mcnemar([True, False], [True, False])[2] == 1.0
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_bootstrap_intervals():
    flags = [True] * 30 + [False] * 70
    acc, lo, hi = accuracy_ci(flags, n_boot=4000)
    assert acc == 0.3 and lo < 0.3 < hi
    assert 0.15 < hi - lo < 0.22  # about 2 * 1.96 * sqrt(0.3 * 0.7 / 100) = 0.18
    diff, dlo, dhi = paired_difference_ci(flags, flags)
    assert diff == dlo == dhi == 0.0


def test_paired_over_seeds():
    import random

    rng = random.Random(1)
    a = [rng.random() < 0.6 for _ in range(300)]
    b = [rng.random() < 0.5 for _ in range(300)]
    # one seed: exactly the paired bootstrap and McNemar
    diff, lo, hi, n_pos, n_neg, p = paired_over_seeds([a], [b])
    assert (diff, lo, hi) == paired_difference_ci(a, b)
    assert (n_neg, n_pos, p) == mcnemar(a, b)
    # three seeds on the same items: per-item means; an item counts once whatever the seeds
    a3, b3 = [a, a, [not x for x in a]], [b, b, b]
    diff3, lo3, hi3, pos3, neg3, p3 = paired_over_seeds(a3, b3)
    means = [sum(x[i] - y[i] for x, y in zip(a3, b3)) / 3 for i in range(300)]
    assert diff3 == pytest.approx(sum(means) / 300) and lo3 <= diff3 <= hi3
    assert (pos3, neg3) == (sum(m > 0 for m in means), sum(m < 0 for m in means)) and pos3 + neg3 <= 300
    with pytest.raises(ValueError):
        paired_over_seeds([a], [b, b])


def test_report_pools_seeds_against_the_same_seed_baseline():
    from modetune.experiments import _pooled_rows

    def run(preset, seed, flags):
        return {"name": f"{preset}-s{seed}", "preset": preset, "seed": seed, "mod": {},
                "correct": {"boolq": {str(i): f for i, f in enumerate(flags)}}}

    base = [True] * 10 + [False] * 10
    better = [True] * 18 + [False] * 2  # right on 8 more items with every seed
    results = [run("lora_notk", s, base) for s in (1, 2, 3)] + [run("lora_notk_mod", s, better) for s in (1, 2, 3)]
    rows = "\n".join(_pooled_rows(results, ["boolq"]))
    assert "| lora_notk_mod  | 1, 2, 3 | 20 | +40.0 [" in rows and "| 8 / 0 | 0.008 |" in rows  # p = 2 / 2**8
    assert _pooled_rows(results[:4], ["boolq"]) == []  # one seed of MoD: nothing to pool


def test_report_flags_answer_collapse(tmp_path):
    from modetune.experiments import _collapse_rows

    rows = [{"extracted": "true", "gold": "true" if i < 7 else "false", "correct": i < 7} for i in range(10)]
    (tmp_path / "boolq.jsonl").write_text("".join(json.dumps({"id": str(i), **r}) + "\n" for i, r in enumerate(rows)))
    lines = _collapse_rows([{"name": "constant", "eval_dir": str(tmp_path)}])
    assert "| constant | 100.0 |" in lines and "| (gold majority) | 70.0 |" in lines


def test_plans_cover_the_studies():
    config = ExperimentConfig()
    names = {study: [run.name for run in plan(study, config)] for study in STUDIES}
    variants = plan("variants", config)
    assert [r.seed for r in variants if r.preset == "lora_notk_mod"] == [42, 43, 44]
    assert {r.preset for r in variants} == {"lora_notk", "lora_notk_mod", "lora_all", "lora_all_mod", "mod_only"}
    assert [r.preset for r in plan("motivation", config)] == ["lora_layer_0", "lora_layer_1", "lora_layer_2"]
    assert {r.mod.get("top_k") for r in plan("topk", config)} == {None, 1, 2}  # K = 3 = k is the dense run
    assert {r.mod.get("k") for r in plan("topk", config)} >= {1, 2, 4, 5}
    assert len(names["sweep"]) == 1 + 2 + 4 + 4  # baseline; lambda 0 x 2 inits; lambda 0.1 and 1 x 2 x 2
    assert {"no_distill-s42", "no_member_norms-s42"} <= set(names["ablations"])
    with pytest.raises(ValueError, match="Unknown study"):
        plan("everything", config)


def test_variants_smoke_runs_end_to_end_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "variants"
    argv = ["experiment", "variants", "--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    start = time.perf_counter()
    assert main(argv) == 0
    first = time.perf_counter() - start
    report = (out / "report.md").read_text()
    for name in ("lora_notk-s42", "lora_notk_mod-s42", "lora_all-s42", "lora_all_mod-s42", "mod_only-s42"):
        assert f"| {name} |" in report
        assert (out / name / "eval" / "builtin.jsonl").exists()
        val = json.loads((out / name / "val.json").read_text())
        assert val["tokens"] > 0 and val["ensemble_ce"] > 0
    assert "McNemar" in report and "The paper's numbers" in report and (out / "variants-loss.png").exists()
    assert (out / "report-variants.md").read_text() == report
    assert f"Command: `modetune experiment variants --smoke --model {tiny_model_dir} --output-dir {out}`" in report
    mod_val = json.loads((out / "lora_notk_mod-s42" / "val.json").read_text())
    assert len(mod_val["member_ce"]) == 3
    # a rerun finds everything done: no training, no generation
    stamp = (out / "lora_notk-s42" / "adapter" / "adapter_model.safetensors").stat().st_mtime
    start = time.perf_counter()
    assert main(argv) == 0
    assert (out / "lora_notk-s42" / "adapter" / "adapter_model.safetensors").stat().st_mtime == stamp
    assert time.perf_counter() - start < first


def test_motivation_smoke_draws_venn(tiny_model_dir, tmp_path):
    out = tmp_path / "motivation"
    assert main(["experiment", "motivation", "--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "N ∩ N-1 ∩ N-2" in report and (out / "venn" / "solved-builtin.png").exists()


def test_only_selects_runs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "part"
    assert main(["experiment", "ablations", "--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out),
                 "--only", "lora_notk-s42,no_distill-s42"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["lora_notk-s42", "no_distill-s42"]
    assert main(["experiment", "ablations", "--smoke", "--only", "nope"]) == 1
    assert "No run named nope in study ablations" in capsys.readouterr().err


def test_studies_share_runs_but_refuse_other_settings(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "shared"
    common = ["--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    assert main(["experiment", "ablations", *common, "--only", "lora_notk_mod-s42"]) == 0
    stamp = (out / "lora_notk_mod-s42" / "adapter" / "adapter_model.safetensors").stat().st_mtime
    assert main(["experiment", "sparsity", *common, "--only", "lora_notk_mod-s42"]) == 0  # reused, not retrained
    assert (out / "lora_notk_mod-s42" / "adapter" / "adapter_model.safetensors").stat().st_mtime == stamp
    assert main(["experiment", "sparsity", *common, "--only", "lora_notk_mod-s42", "--learning-rate", "0.5"]) == 1
    assert "was trained with other settings (learning_rate: 0.0003 != 0.5)" in capsys.readouterr().err


def test_unknown_experiment_field(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text("seedz: [1]\n")
    assert main(["experiment", "variants", "--config", str(tmp_path / "e.yaml")]) == 1
    assert "Unknown experiment field(s): seedz" in capsys.readouterr().err
