"""Property-based tests (hypothesis) of the two gates every user value passes: config construction
and the training-data loader. Whatever the value, the result is a valid object or a one-line
user error (:class:`~modetune.utils.errors.UserError`), never another exception."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modetune.data import load_json_records, pack_rows
from modetune.eval.probe import ProbeConfig
from modetune.train.config import TrainConfig
from modetune.train.fit_router import FitRouterConfig
from modetune.utils.errors import UserError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.sampled_from(["3e-4", "16", "-1", "0", "1.5", "nan", "inf", "none", ""]),
                   st.lists(st.integers(0, 5), max_size=3))
PLAUSIBLE = st.one_of(st.integers(1, 8), st.sampled_from(["1", "2", "4", "8", "3e-4", "0.5", "lora_notk", "mod_only",
                                                            "global", "per_group", "chat", "alpaca", "true"]), VALUES)
TRAIN_FIELDS = ["lora_r", "lora_alpha", "lora_dropout", "cutoff_len", "batch_size", "micro_batch_size",
                "learning_rate", "num_epochs", "max_steps", "warmup_steps", "seed", "val_size", "max_grad_norm",
                "k", "distill_lambda", "temperature", "packing", "preset", "clip_scope", "prompt_style"]


@SETTINGS
@given(st.dictionaries(st.sampled_from(TRAIN_FIELDS), PLAUSIBLE, max_size=4))
def test_train_config_is_valid_or_refused_in_one_line(values):
    try:
        config = TrainConfig.from_dict(values)
    except UserError as error:
        assert "\n" not in str(error) and str(error)
        return
    for f in dataclasses.fields(config):  # what it built satisfies its own declared ranges
        value = getattr(config, f.name)
        if value is not None and ("min" in f.metadata or "gt" in f.metadata):
            assert value >= f.metadata.get("min", value) and value > f.metadata.get("gt", value - 1), f.name
    assert config.batch_size % config.micro_batch_size == 0
    assert 0 <= config.lora_dropout < 1 and config.seed >= 0
    assert isinstance(config.lora_r, int) and isinstance(config.learning_rate, float)
    assert 1 <= config.mod.k and config.max_steps == -1 or config.max_steps > 0


@SETTINGS
@given(st.sampled_from([ProbeConfig, FitRouterConfig]),
       st.dictionaries(st.sampled_from(["records", "candidates", "oracle_steps", "seed", "steps", "batch_size",
                                        "ce_records", "val_size", "cutoff_len", "learning_rate", "fit_lr"]),
                       PLAUSIBLE, max_size=3))
def test_probe_and_fit_router_configs_are_valid_or_refused_in_one_line(cls, values):
    known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
    try:
        config = cls(**known)
    except UserError as error:
        assert "\n" not in str(error) and str(error)
        return
    for name in ("records", "candidates", "oracle_steps", "steps", "batch_size", "ce_records", "cutoff_len"):
        if hasattr(config, name):
            assert isinstance(getattr(config, name), int) and getattr(config, name) > 0, name
    assert config.seed >= 0


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.sampled_from(["instruction", "input", "output",
                                                                             "answer", "messages", "x"]),
                                                            inner, max_size=4)), max_leaves=12)


RECORD = st.fixed_dictionaries({"instruction": st.text(max_size=8), "output": st.text(max_size=8)},
                               optional={"input": st.one_of(st.text(max_size=4), st.integers()), "answer": JSON})
CONVERSATION = st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": st.text(max_size=6)}), max_size=3)})


@SETTINGS
@given(st.one_of(st.lists(st.one_of(RECORD, CONVERSATION, JSON), max_size=4), JSON),
       st.sampled_from([".json", ".jsonl"]), st.one_of(st.just(b""), st.binary(max_size=4)))
def test_data_files_load_as_records_or_are_refused_in_one_line(value, suffix, junk):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        if suffix == ".jsonl" and isinstance(value, list):
            text = "\n".join(json.dumps(v) for v in value)
        else:
            text = json.dumps(value)
        path.write_bytes(text.encode() + junk)
        try:
            records = load_json_records(path)
        except UserError as error:
            assert "\n" not in str(error) and str(error)
            return
    assert records and all(isinstance(r, dict) for r in records)
    for record in records:
        if "messages" in record:
            assert all(m["role"] in ("system", "user", "assistant") for m in record["messages"])
        else:
            assert all(isinstance(record[key], str) for key in ("instruction", "input", "output"))


@SETTINGS
@given(st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=12), min_size=1, max_size=6),
       st.integers(1, 16), st.booleans())
def test_packing_keeps_every_token_in_order(rows, block, masked):
    tokenized = [{"input_ids": ids, "labels": [-100] * len(ids) if masked else list(ids)} for ids in rows]
    blocks = pack_rows(tokenized, block)
    assert all(len(b["input_ids"]) <= block and len(b["labels"]) == len(b["input_ids"]) for b in blocks)
    if not masked and sum(len(ids) - 1 for ids in rows) > 0 and all(len(b) for b in blocks):
        learned = [t for b in blocks for t in b["labels"] if t != -100]
        assert set(learned) <= {t for ids in rows for t in ids[1:]}
    if masked:
        assert blocks == []
