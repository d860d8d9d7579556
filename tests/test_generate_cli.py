"""`modetune generate` and `modetune chat` on a tiny adapter trained here for two steps."""

from __future__ import annotations

import io
import json

import pytest
import torch

from modetune.cli import main
from modetune.loading import ModelSource
from train_helpers import run_cli, train_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("gen-run")
    assert main(train_args(tiny_model_dir, out, "--max-steps", "2", "--batch-size", "4", "--val-size", "0",
                           "--save-steps", "100")) == 0
    return out / "adapter"


@pytest.fixture(scope="module")
def loaded(adapter):
    from modetune.eval.generate import load_for_generation

    return load_for_generation(ModelSource(adapter=str(adapter)))  # the base recorded by train


def _greedy(model, tokenizer, text, max_new, member=None):
    from modetune.eval.members import forced_member

    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad(), forced_member(model, member):
        out = model.generate(**ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_adapter_records_its_base(adapter, tiny_model_dir, loaded):
    assert json.loads((adapter / "base_model.json").read_text())["model"] == str(tiny_model_dir.resolve())
    model, _, info = loaded
    assert info["kind"] == "mod" and info["model"] == str(tiny_model_dir.resolve())


def test_generate_prompts_from_arguments_and_stdin(adapter, loaded, capsys):
    """The prompt style defaults to the adapter's training style (alpaca here)."""
    from modetune.utils.prompts import format_prompt

    model, tokenizer, _ = loaded
    prompts = ["What is 2 + 3?", "Name a colour."]
    expected = [_greedy(model, tokenizer, format_prompt(p), 6) for p in prompts]
    assert main(["generate", "--adapter", str(adapter), *prompts, "--max-new-tokens", "6", "--jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["prompt"] for r in rows] == prompts and [r["completion"] for r in rows] == expected
    # the same prompts on stdin, in a subprocess, with no --model (the recorded base)
    result = run_cli("generate", "--adapter", str(adapter), "--max-new-tokens", "6", "--jsonl",
                     input_text="\n".join(prompts) + "\n")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["completion"] for line in result.stdout.splitlines()] == expected


def test_generate_member_sampling_and_beams(adapter, loaded, capsys):
    from modetune.data.chat import chat_prompt

    model, tokenizer, _ = loaded
    prompt = "Tell me a story."
    base = ["generate", "--adapter", str(adapter), prompt, "--max-new-tokens", "6", "--prompt-style", "chat"]

    def run(*extra):
        assert main([*base, *extra]) == 0
        return capsys.readouterr().out.strip("\n")

    assert run("--member", "0") == _greedy(model, tokenizer, chat_prompt(tokenizer, prompt), 6, member=0).strip("\n")
    assert run("--sample", "--seed", "1", "--temperature", "1.0") == run("--sample", "--seed", "1", "--temperature", "1.0")
    draws = {run("--sample", "--seed", str(seed), "--temperature", "2.0", "--top-p", "1.0") for seed in range(3)}
    assert len(draws) > 1  # different seeds, different samples
    assert isinstance(run("--num-beams", "2"), str)
    assert main([*base, "--member", "7"]) == 1
    assert "member must be in 0..2" in capsys.readouterr().err


def test_chat_loop_keeps_the_conversation_piped(adapter, loaded):
    from modetune.data.chat import render

    model, tokenizer, _ = loaded
    turns = ["Hello there.", "And then?"]
    result = run_cli("chat", "--adapter", str(adapter), "--max-new-tokens", "5", "--system", "Be kind.",
                     input_text="\n".join(turns) + "\n/exit\nnot read\n")
    assert result.returncode == 0, result.stderr
    messages, expected = [{"role": "system", "content": "Be kind."}], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        reply = _greedy(model, tokenizer, render(tokenizer, messages, add_generation_prompt=True), 5)
        messages.append({"role": "assistant", "content": reply})
        expected.append(reply)
    assert result.stdout == "".join(reply + "\n" for reply in expected)


def test_chat_streams_tokens_as_they_come(loaded):
    from modetune.eval.generate import DecodeConfig, chat_loop

    model, tokenizer, _ = loaded

    class Recorder(io.StringIO):
        writes = 0

        def write(self, text):
            self.writes += 1
            return super().write(text)

    out = Recorder()
    messages = chat_loop(model, tokenizer, DecodeConfig(max_new_tokens=12), io.StringIO("hi\n/reset\nhello\n"), out)
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[0]["content"] == "hello"
    assert out.writes > 2  # pieces of each reply were written before it was complete
    assert out.getvalue().count("\n") >= 2
