"""The datasets shipped in the package: complete and intact; the split command on small files.

That the command rebuilds the shipped arithmetic split from LLM-Adapters' math_data.json (not shipped: every
record is a test item) is checked by scripts/check_split.sh DIR, given LLM-Adapters' dataset folder
(a maintainer's provenance check: the suite needs nothing outside the repository).
"""

import json
import subprocess
from pathlib import Path

import pytest

from modetune.cli import main
from modetune.data import load_training_records
from modetune.data.packaged import DATA_ROOT, LLM_ADAPTERS, MATH_SPLIT, check_manifest, manifest, packaged_path
from modetune.data.split import ARITHMETIC_SETS, is_test_question, split_arithmetic
from modetune.utils.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
EVAL_SETS = {"AddSub": 395, "AQuA": 254, "gsm8k": 1319, "mawps": 238, "MultiArith": 600, "SingleEq": 508, "SVAMP": 1000,
             "ARC-Challenge": 1172, "ARC-Easy": 2376, "boolq": 3270, "piqa": 1838, "social_i_qa": 1954,
             "winogrande": 1267, "openbookqa": 500}
TRAIN_SETS = {"ARC-Challenge": 1119, "ARC-Easy": 2251, "boolq": 9427, "openbookqa": 4957}
SPLIT = {"train.json": 1573, "AddSub": 198, "AQuA": 126, "gsm8k": 661, "mawps": 117, "MultiArith": 291, "SingleEq": 246,
         "SVAMP": 516}


def test_every_dataset_ships_with_its_count_licence_and_hash():
    found = manifest()
    for name, n in EVAL_SETS.items():
        assert found[f"llm-adapters/{name}/test.json"]["records"] == n
    for name, n in TRAIN_SETS.items():
        assert found[f"llm-adapters/{name}/train.json"]["records"] == n
    for name, n in SPLIT.items():
        assert found[f"math-split/{name}" if name.endswith(".json") else f"math-split/{name}/test.json"]["records"] == n
    assert len(found) == len(EVAL_SETS) + len(TRAIN_SETS) + len(SPLIT)
    assert "math_data.json" not in " ".join(found)  # all test items: never shipped as a training file
    assert check_manifest() == []
    assert "Apache License" in (LLM_ADAPTERS / "LICENSE").read_text()
    provenance = (DATA_ROOT / "PROVENANCE.md").read_text()
    assert all(v["sha256"] in provenance for v in found.values())


def test_split_halves_are_disjoint_from_training_questions():
    train_keys = {r["instruction"] for r in json.loads((MATH_SPLIT / "train.json").read_text())}
    assert not any(is_test_question(q) for q in train_keys)
    for name in ARITHMETIC_SETS:
        half = json.loads((MATH_SPLIT / name / "test.json").read_text())
        assert all(is_test_question(r["instruction"]) for r in half)
        upstream = json.loads((LLM_ADAPTERS / name / "test.json").read_text())
        assert half == [r for r in upstream if is_test_question(r["instruction"])]  # upstream order kept


def test_split_rule_on_a_small_example():
    odd = next(f"q{i}" for i in range(100) if is_test_question(f"q{i}"))
    even = [f"Q{i} !" for i in range(100) if not is_test_question(f"q{i}")][:2]
    math_data = [{"instruction": even[0], "output": "a"}, {"instruction": odd, "output": "b"},
                 {"instruction": even[0].lower(), "output": "dup"}, {"instruction": even[1], "output": "c"}]
    train, halves = split_arithmetic(math_data, {"X": [{"instruction": even[0]}, {"instruction": odd}]})
    assert [r["output"] for r in train] == ["a", "c"]  # test item dropped, duplicate by normalised text dropped
    assert halves == {"X": [{"instruction": odd}]}


def test_split_command_on_small_files_and_bad_folders(tmp_path, capsys):
    odd = [f"q{i}" for i in range(40) if is_test_question(f"q{i}")][:3]
    even = [f"q{i}" for i in range(40) if not is_test_question(f"q{i}")][:2]
    source = tmp_path / "dataset"
    source.mkdir()
    (source / "math_data.json").write_text(json.dumps([{"instruction": q, "output": "o"} for q in even + odd]))
    for name in ARITHMETIC_SETS:
        (source / name).mkdir()
        (source / name / "test.json").write_text(json.dumps([{"instruction": q, "answer": "1"} for q in odd + even]))
    assert main(["data", "split-arithmetic", "--source", str(source), "--output", str(tmp_path / "out")]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines()[:-1])
    assert printed == {"train.json": "2", **{f"{name}/test.json": "3" for name in ARITHMETIC_SETS}}
    assert [r["instruction"] for r in json.loads((tmp_path / "out" / "train.json").read_text())] == even
    assert [r["instruction"] for r in json.loads((tmp_path / "out" / "SVAMP" / "test.json").read_text())] == odd
    assert main(["data", "split-arithmetic", "--source", str(tmp_path / "nowhere"), "--output", str(tmp_path)]) == 1
    assert "modetune data: error: " in capsys.readouterr().err
    (source / "math_data.json").unlink()
    assert main(["data", "split-arithmetic", "--source", str(source), "--output", str(tmp_path / "o2")]) == 1
    assert "math_data.json not found" in capsys.readouterr().err


def test_data_list_prints_every_packaged_file_with_its_count(capsys):
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in lines[1:-1]}
    assert rows == {f"packaged:{name}": entry["records"] for name, entry in manifest().items()}
    assert rows["packaged:math-split/train.json"] == 1573 and rows["packaged:llm-adapters/boolq/test.json"] == 3270


def test_packaged_source_loads_and_bad_names_are_one_line():
    records = load_training_records("packaged:math-split/train.json", limit=5)
    assert len(records) == 5 and records[0]["output"].strip()
    assert packaged_path("llm-adapters/boolq/train.json").is_file()
    with pytest.raises(DataError, match="no such packaged file"):
        packaged_path("packaged:math-split/nope.json")
    with pytest.raises(DataError, match="no such packaged file"):
        packaged_path("packaged:../../errors.py")


def test_nothing_in_the_project_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    offenders = [name for name in files if name != "tests/test_data_packaged.py" and (ROOT / name).is_file()
                 and "../shared" in (ROOT / name).read_text(errors="ignore")]
    assert offenders == []
