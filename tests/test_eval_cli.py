"""The command line of evaluation: ``modetune eval``, ``report`` and ``solved``, their outputs
and their one-line errors on bad input."""

from __future__ import annotations

import json
import re

import pytest

from eval_fixtures import make_records, tiny_llama, write_json
from modetune import MoDConfig, get_mod_model
from modetune.cli import main
from modetune.eval.results import read_results
from tiny import perturb

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest.py)


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str, pattern: str) -> None:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), errors[0]


def test_cli_bad_input(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    write_json(data / "gsm8k" / "test.json", make_records(3))
    noanswer = [dict(r) for r in make_records(3)]
    del noanswer[2]["answer"]
    write_json(data / "SVAMP" / "test.json", noanswer)
    base = ["eval", "--model", tiny_model_dir, "--data-dir", data, "--output", tmp_path / "o", "--no-progress"]

    code, _, err = _cli(capsys, *base, "--datasets", "gsm8k,nonsense")
    assert code == 1
    _one_error_line(err, "Unknown dataset 'nonsense'")
    code, _, err = _cli(capsys, *base, "--datasets", "boolq")
    assert code == 1
    _one_error_line(err, r"Dataset boolq: .*boolq/test.json not found")
    code, _, err = _cli(capsys, *base, "--datasets", "svamp")
    assert code == 1
    _one_error_line(err, r"record 2 has no 'answer' field")
    code, _, err = _cli(capsys, *base, "--datasets", "gsm8k", "--adapter", tmp_path / "missing")
    assert code == 1
    _one_error_line(err, "Adapter folder .* does not exist")
    assert not (tmp_path / "o").exists()


def test_cli_adapter_on_the_wrong_base(capsys, tmp_path, tokenizer, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    data = write_json(tmp_path / "data" / "gsm8k" / "test.json", make_records(2)).parent.parent
    other = tiny_llama(tokenizer, seed=7)
    get_mod_model(other, MoDConfig(k=2)).save_pretrained(tmp_path / "mod")
    code, _, err = _cli(capsys, "eval", "--model", tiny_model_dir, "--adapter", tmp_path / "mod", "--datasets",
                        "gsm8k", "--data-dir", data, "--output", tmp_path / "o")
    assert code == 1
    _one_error_line(err, "trained on a different base model")

    wider = tiny_llama(tokenizer, seed=7, hidden_size=48, intermediate_size=96)
    lora = get_peft_model(wider, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(str(tmp_path / "lora"))
    code, _, err = _cli(capsys, "eval", "--model", tiny_model_dir, "--adapter", tmp_path / "lora", "--datasets",
                        "gsm8k", "--data-dir", data, "--output", tmp_path / "o")
    assert code == 1
    _one_error_line(err, "LoRA adapter in .* does not fit base model")

    (tmp_path / "empty").mkdir()
    code, _, err = _cli(capsys, "eval", "--model", tiny_model_dir, "--adapter", tmp_path / "empty", "--datasets",
                        "gsm8k", "--data-dir", data, "--output", tmp_path / "o")
    assert code == 1
    _one_error_line(err, "holds neither mod_config.json")


def test_cli_eval_mod_lora_base_report_and_solved(capsys, tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = write_json(tmp_path / "data" / "gsm8k" / "test.json", make_records(5)).parent.parent
    write_json(tmp_path / "data" / "boolq" / "test.json", make_records(4, "boolq"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    perturb(get_mod_model(base, MoDConfig(k=3)), router_std=2.0).save_pretrained(tmp_path / "mod")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                           init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "lora"))

    common = ["--model", tiny_model_dir, "--datasets", "gsm8k,boolq", "--data-dir", data, "--max-new-tokens", 4,
              "--batch-size", 2, "--no-progress"]
    code, out, err = _cli(capsys, "eval", *common, "--adapter", tmp_path / "mod", "--members", "all")
    assert code == 0, err
    assert "| mod |" in out and "| mod [member0] |" in out and "GSM8K" in out and "BoolQ" in out
    assert (tmp_path / "mod-eval-greedy" / "gsm8k.member2.jsonl").exists()
    code, out, err = _cli(capsys, "eval", *common, "--adapter", tmp_path / "lora", "--output", tmp_path / "lora-run")
    assert code == 0, err
    code, out, err = _cli(capsys, "eval", *common, "--output", tmp_path / "base-run", "--label", "base")
    assert code == 0, err
    lora_rows = read_results(tmp_path / "lora-run" / "gsm8k.jsonl")
    base_rows = read_results(tmp_path / "base-run" / "gsm8k.jsonl")
    assert [r["response"] for r in lora_rows] != [r["response"] for r in base_rows]  # the adapter is applied

    runs = [tmp_path / "mod-eval-greedy", tmp_path / "lora-run", tmp_path / "base-run"]
    code, out, err = _cli(capsys, "report", *runs, "--output", tmp_path / "table")
    assert code == 0, err
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["columns"] == ["gsm8k", "boolq"]
    assert [r["name"] for r in table["rows"]] == ["mod", "mod [member0]", "mod [member1]", "mod [member2]",
                                                   "lora", "base"]
    assert "Arithmetic" in out and "Commonsense" in out

    code, out, err = _cli(capsys, "solved", *[r / "gsm8k.jsonl" for r in runs], "--output", tmp_path / "venn")
    assert code == 0, err
    assert (tmp_path / "venn" / "solved-gsm8k.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = _cli(capsys, "solved", *runs, "--dataset", "boolq", "--output", tmp_path / "venn",
                          "--labels", "a,b,c")
    assert code == 0, err
    assert "| a ∩ b ∩ c |" in out
    code, _, err = _cli(capsys, "solved", runs[0] / "gsm8k.jsonl", runs[1] / "boolq.jsonl")
    assert code == 1
    _one_error_line(err, "different datasets")


def test_cli_eval_reads_the_packaged_sets_by_default(capsys, tmp_path, tiny_model_dir, monkeypatch):
    import datasets

    from modetune.data.packaged import LLM_ADAPTERS, MATH_SPLIT

    def hub(*args, **kwargs):
        raise ConnectionError("the hub was asked")

    monkeypatch.setattr(datasets, "load_dataset", hub)
    common = ["eval", "--model", tiny_model_dir, "--datasets", "gsm8k", "--limit", 2, "--max-new-tokens", 2,
              "--no-progress"]
    for extra, folder in (([], LLM_ADAPTERS), (["--data-dir", "packaged:math-split"], MATH_SPLIT)):
        out = tmp_path / folder.name
        code, _, err = _cli(capsys, *common, *extra, "--output", out)
        assert code == 0, err
        items = json.loads((folder / "gsm8k" / "test.json").read_text())[:2]
        assert [r["prompt"].split("### Instruction:\n")[1].split("\n\n### Response")[0]
                for r in read_results(out / "gsm8k.jsonl")] == [r["instruction"] for r in items]
    code, _, err = _cli(capsys, *common, "--data-dir", "hub", "--output", tmp_path / "hub")
    assert code == 1  # the hub only on request
    _one_error_line(err, "Cannot load openai/gsm8k from the Hugging Face hub: the hub was asked")
