"""lm-evaluation-harness on our model object: local tasks, scores equal to our own scorers."""

from __future__ import annotations

import json

import pytest
import torch

from modetune import MoDConfig, get_mod_model
from modetune.cli import main
from modetune.eval.generation import generate_responses
from modetune.eval.lm_eval import (
    answer_choices,
    choice_loglikelihoods,
    loglikelihood_accuracy,
    resolve_tasks,
    run_lm_eval,
    task_config,
)
from modetune.eval.members import forced_member
from modetune.eval.protocol import score_response
from modetune.eval.sources import load_test_items
from modetune.utils.errors import ConfigError
from modetune.utils.prompts import format_prompt
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest.py)

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def mod_model(tokenizer):
    base = tiny_model("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                      tie_word_embeddings=False, initializer_range=0.2)
    model = get_mod_model(base, MoDConfig(k=3)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.router.weight.normal_(0, 2.0, generator=g)
        for norm in model.norms:
            norm.weight.add_(torch.randn(norm.weight.shape, generator=g))
    return model


QUESTIONS = ["is the sky blue", "do fish fly", "can a cat bark at night when it is dark and cold",
             "is paris in france", "does ice melt", "are whales mammals that live in the sea"]


@pytest.fixture(scope="module")
def boolq_file(tmp_path_factory):
    records = [{"instruction": f"Please answer the following question with true or false, question: {q}?"
                               "\n\nAnswer format: true/false", "input": "", "output": "",
                "answer": ["true", "false"][i % 2]} for i, q in enumerate(QUESTIONS)]
    path = tmp_path_factory.mktemp("lm") / "boolq.json"
    path.write_text(json.dumps(records))
    return path, records


def test_answer_choices():
    arc = {"instruction": "...\n\nAnswer format: answer1/answer2/answer3"}
    assert answer_choices("ARC-Challenge", arc) == ["answer1", "answer2", "answer3"]
    assert answer_choices("boolq", {"instruction": "q"}) == ["true", "false"]
    assert answer_choices("AQuA", {"instruction": "q"}) == list("ABCDE")
    with pytest.raises(ValueError, match="numeric"):
        answer_choices("gsm8k", {"instruction": "q"})
    with pytest.raises(ValueError, match="only modetune_gsm8k_gen"):
        task_config("gsm8k", "mc", "x.json")


def test_loglikelihood_task_gets_ensemble_logits(tokenizer, mod_model, boolq_file):
    path, records = boolq_file
    results = run_lm_eval(mod_model, tokenizer, [task_config("boolq", "mc", path)], batch_size=4, log_samples=True)
    ours = loglikelihood_accuracy(mod_model, tokenizer, "boolq", records)
    samples = sorted(results["samples"]["modetune_boolq_mc"], key=lambda s: s["doc_id"])
    theirs = [[resp[0][0] for resp in s["resps"]] for s in samples]
    ours_ll = [item["loglikelihoods"] for item in ours["items"]]
    torch.testing.assert_close(torch.tensor(theirs), torch.tensor(ours_ll), rtol=0, atol=1e-3)
    assert results["results"]["modetune_boolq_mc"]["acc,none"] == pytest.approx(ours["acc"])
    # the ensemble, not the final layer alone: member 2's log-likelihoods differ
    member = loglikelihood_accuracy(mod_model, tokenizer, "boolq", records, member=2)
    assert max(abs(a - b) for x, y in zip(ours_ll, [i["loglikelihoods"] for i in member["items"]])
               for a, b in zip(x, y)) > 0.1
    with_member = run_lm_eval(mod_model, tokenizer, [task_config("boolq", "mc", path)], batch_size=4,
                              log_samples=True, member=2)
    samples = sorted(with_member["samples"]["modetune_boolq_mc"], key=lambda s: s["doc_id"])
    torch.testing.assert_close(torch.tensor([[r[0][0] for r in s["resps"]] for s in samples]),
                               torch.tensor([i["loglikelihoods"] for i in member["items"]]), rtol=0, atol=1e-3)
    assert mod_model.router.fixed is None


def test_generation_task_equals_our_generation(tokenizer, mod_model, boolq_file):
    path, records = boolq_file
    results = run_lm_eval(mod_model, tokenizer, [task_config("boolq", "gen", path, max_gen_toks=8)], batch_size=4,
                          log_samples=True)
    samples = sorted(results["samples"]["modetune_boolq_gen"], key=lambda s: s["doc_id"])
    theirs = [s["resps"][0][0].strip() for s in samples]
    prompts = [format_prompt(r["instruction"]) for r in records]
    ours = generate_responses(mod_model, tokenizer, prompts, "boolq", 8, stop_at_answer=False)
    assert theirs == ours and len(set(ours)) > 1
    acc = sum(score_response("boolq", o, r["answer"])[1] for o, r in zip(ours, records)) / len(records)
    assert results["results"]["modetune_boolq_gen"]["acc,none"] == pytest.approx(acc)


def test_direct_scorer_matches_a_manual_sum(tokenizer, mod_model):
    context, choice = "Is it true?\n", "true"
    ll = choice_loglikelihoods(mod_model, tokenizer, context, [choice])[0]
    ctx = tokenizer("Is it true?", add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = mod_model(input_ids=torch.tensor([whole])).logits[0].log_softmax(-1)
    manual = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
    assert ll == pytest.approx(manual, abs=1e-4)


def test_resolve_tasks_and_cli_errors(tmp_path, capsys, boolq_file):
    path, _ = boolq_file
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text(path.read_text())
    specs = resolve_tasks("modetune_boolq_mc,arc_easy", data_dir=tmp_path)
    assert specs[0]["task"] == "modetune_boolq_mc" and specs[1] == "arc_easy"
    assert main(["lm-eval", "--tasks", "modetune_nonsense_gen", "--data-dir", str(tmp_path)]) == 1
    assert "Unknown dataset 'nonsense'" in capsys.readouterr().err
    assert main(["lm-eval", "--tasks", "modetune_gsm8k_gen", "--data-dir", str(tmp_path)]) == 1
    assert "gsm8k/test.json not found" in capsys.readouterr().err


def test_cli_lm_eval_on_a_local_task(tmp_path, capsys, tiny_model_dir, boolq_file):
    path, _ = boolq_file
    (tmp_path / "data" / "boolq").mkdir(parents=True)
    (tmp_path / "data" / "boolq" / "test.json").write_text(path.read_text())
    code = main(["lm-eval", "--model", str(tiny_model_dir), "--tasks", "modetune_boolq_mc,modetune_boolq_gen",
                 "--data-dir", str(tmp_path / "data"), "--max-gen-toks", "4", "--batch-size", "4",
                 "--output", str(tmp_path / "res.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    saved = json.loads((tmp_path / "res.json").read_text())
    assert set(saved["results"]) == {"modetune_boolq_mc", "modetune_boolq_gen"}
    assert "modetune_boolq_mc" in out


@pytest.mark.slow
def test_default_model_lm_eval_equals_our_scorers(packaged_data, default_model_dir, tmp_path):
    """The embedded model on 8 real BoolQ items: lm-eval's accuracies equal ours, both paths."""
    from modetune.loading import load_source

    model, tok, _ = load_source(str(default_model_dir))
    records = load_test_items("boolq", data_dir=packaged_data / "llm-adapters")[:8]
    path = tmp_path / "boolq.json"
    path.write_text(json.dumps(records))
    results = run_lm_eval(model, tok, [task_config("boolq", "mc", path), task_config("boolq", "gen", path,
                                                                                      max_gen_toks=12)],
                          batch_size=8)["results"]
    ours_mc = loglikelihood_accuracy(model, tok, "boolq", records)["acc"]
    with forced_member(model, None):
        responses = generate_responses(model, tok, [format_prompt(r["instruction"]) for r in records], "boolq", 12,
                                       stop_at_answer=False)
    ours_gen = sum(score_response("boolq", o, r["answer"])[1] for o, r in zip(responses, records)) / len(records)
    assert results["modetune_boolq_mc"]["acc,none"] == pytest.approx(ours_mc)
    assert results["modetune_boolq_gen"]["acc,none"] == pytest.approx(ours_gen)
    assert 0 < ours_mc < 1  # a real, non-degenerate score


def test_chat_style_task_renders_with_the_chat_template(tokenizer, mod_model, boolq_file):
    """prompt_style chat: lm-eval sees the same chat-template prompts as modetune eval, and generates the same."""
    from modetune.data.chat import render_prompt

    path, records = boolq_file
    with pytest.raises(ConfigError, match="pass the tokenizer"):
        task_config("boolq", "gen", path, prompt_style="chat")
    spec = task_config("boolq", "gen", path, prompt_style="chat", max_gen_toks=8, tokenizer=tokenizer)
    prompts = [render_prompt(tokenizer, r["instruction"], r.get("input") or "", "chat") for r in records]
    assert [spec["doc_to_text"](r) for r in records] == prompts and prompts[0].startswith("<|im_start|>")
    results = run_lm_eval(mod_model, tokenizer, [spec], batch_size=4, log_samples=True)
    samples = sorted(results["samples"]["modetune_boolq_gen"], key=lambda s: s["doc_id"])
    ours = generate_responses(mod_model, tokenizer, prompts, "boolq", 8, stop_at_answer=False)
    assert [s["resps"][0][0].strip() for s in samples] == ours
