"""The command line (modetune.cli): config flags and YAML files, --help, and which errors become one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modetune.cli import build_parser, main
from modetune.cli.flags import config_from_args, load_yaml_config
from modetune.cli.main import COMMANDS
from modetune.cli.train import TrainCommand
from modetune.train.config import TrainConfig
from train_helpers import fails

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_yaml_config_and_flag_override(tmp_path):
    from modetune.cli import build_parser

    (tmp_path / "c.yaml").write_text("preset: lora_all_mod\ndistill_lambda: 0.1\nlora_r: 8\nlora_targets: [q_proj]\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--lora-r", "16",
                                      "--distill-through-body", "--top-k", "none"])
    config = config_from_args(args, TrainCommand).train
    assert isinstance(config, TrainConfig)
    literal = config_from_args(build_parser().parse_args(["train", "--router-init", "uniform", "--distill-direction",
                                                         "forward", "--router-input", "entry", "--loss-impl", "naive"]),
                               TrainCommand).train
    assert (literal.mod.router_init, literal.mod.distill_direction, literal.mod.router_input,
            literal.mod.loss_impl) == ("uniform", "forward", "entry", "naive")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--router-init", "sideways"])
    assert (config.preset, config.lora_r, config.lora_targets) == ("lora_all_mod", 16, ["q_proj"])
    assert config.mod.distill_lambda == 0.1 and config.mod.distill_through_body is True and config.mod.top_k is None


def test_shipped_configs_parse():
    root = Path(__file__).resolve().parents[1] / "configs"
    assert root.resolve() == Path(__file__).resolve().parents[1] / "src/modetune/configs"  # the clone's link
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"default.yaml", "paper_llama7b.yaml", "smollm_math_split.yaml"} <= set(names)
    for path in root.glob("*.yaml"):
        if path.name.startswith("accelerate_"):  # launcher configs (`accelerate launch --config_file`): tests/test_fsdp.py
            continue
        TrainConfig.from_dict(load_yaml_config(path))
    # `modetune train` with no arguments runs exactly configs/default.yaml
    assert TrainConfig.from_dict(load_yaml_config(root / "default.yaml")) == TrainConfig()
    assert "math_data.json" not in "".join(p.read_text() for p in root.glob("*.yaml"))


def test_unknown_experiment_field(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text("seedz: [1]\n")
    assert main(["experiment", "variants", "--config", str(tmp_path / "e.yaml")]) == 1
    assert "Unknown experiment field(s): seedz" in capsys.readouterr().err


# ---------------------------------------------------------------- --help: type, meaning and default of every flag
def _help_entries(command: str, capsys) -> dict[str, tuple[str, str]]:
    """``{option: (invocation, help text)}`` parsed from ``modetune COMMAND --help``."""
    import re

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    entries, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        if re.match(r"^  -", line):
            invocation, _, text = line.strip().partition("  ")
            current = re.match(r"-+[\w-]+", invocation).group(0)
            entries[current] = [invocation, text.strip()]
        elif current and line.startswith(" " * 6) and line.strip():
            entries[current][1] = (entries[current][1] + " " + line.strip()).strip()
        else:
            current = None
    return {option: tuple(entry) for option, entry in entries.items() if option != "-h"}


def _loads_an_adapter(command: str) -> bool:
    import argparse

    from modetune.cli.main import build_parser

    sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
    return any("--adapter" in action.option_strings for action in sub.choices[command]._actions)


ADAPTER_COMMANDS = [name for name in COMMANDS if _loads_an_adapter(name)]  # found from the CLI's own table


def test_the_commands_that_load_an_adapter_are_found():
    assert set(ADAPTER_COMMANDS) >= {"eval", "lm-eval", "generate", "chat", "export", "probe", "fit-router"}


@pytest.mark.parametrize("command", ADAPTER_COMMANDS)
def test_every_command_that_loads_an_adapter_has_the_loader_flags(command, capsys):
    """The one adapter loader's errors recommend --ignore-base-mismatch, --trust-remote-code and (for a
    QLoRA adapter) --quantization; every command that loads an adapter has them, and --chat-template."""
    entries = _help_entries(command, capsys)
    for flag in ("--model", "--adapter", "--ignore-base-mismatch", "--trust-remote-code", "--quantization",
                 "--chat-template"):
        assert flag in entries, (command, flag)


@pytest.mark.parametrize("command", [name for name in COMMANDS if name not in ("data", "config")])  # (subcommands)
def test_help_shows_type_meaning_and_default_of_every_flag(command, capsys):
    import argparse
    import re

    from modetune.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = {option: action for action in subparsers.choices[command]._actions for option in action.option_strings}
    entries = _help_entries(command, capsys)
    assert set(entries) == {option for option in actions if option.startswith("--") and option != "--help"
                            and not option.startswith("--no-")}
    for option, (invocation, text) in entries.items():
        assert text and ("(default: " in text or text.endswith("(required)")), (option, text)
        meaning = text.rsplit("(default: ", 1)[0].removesuffix("(required)").strip()
        assert len(meaning) > 5, (option, text)
        if actions[option].nargs != 0:  # a value: its type or its choices
            assert re.search(rf"{option} \[?(\{{|[A-Z])", invocation), (option, invocation)  # [X]: optional value
    if command == "train":
        assert entries["--distill-lambda"] == ("--distill-lambda FLOAT", "weight of L_distill in L = L_task + lambda * "
                                               "L_distill (default: 1.0; range: >= 0)")
        assert entries["--router-init"][0] == "--router-init {uniform,final}"
        assert entries["--top-k"][0] == "--top-k INT|none" and "(default: none; range: >= 1)" in entries["--top-k"][1]
    if command == "experiment":  # the study's own defaults, not TrainConfig's
        assert "(default: 64;" in entries["--val-size"][1] and "(default: 42,43,44;" in entries["--key-seeds"][1]
        assert "--preset" not in entries and "--seed" not in entries and "--k" in entries


def _config_classes() -> list[type]:
    """Every config dataclass of the package (``*Config``), found by importing each module."""
    import dataclasses
    import importlib
    import inspect
    import pkgutil

    import modetune

    found = {}
    for info in pkgutil.walk_packages(modetune.__path__, "modetune."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            is_hf = any(base.__module__.startswith("transformers.") for base in obj.__mro__)  # an export's config.json
            if name.endswith("Config") and dataclasses.is_dataclass(obj) and obj.__module__.startswith("modetune.") \
                    and not is_hf:
                found[f"{obj.__module__}.{name}"] = obj
    return list(found.values())


def test_every_config_field_carries_its_help():
    import dataclasses

    classes = _config_classes()
    assert {cls.__name__ for cls in classes} >= {"TrainConfig", "MoDConfig", "ExperimentConfig", "EvalConfig",
                                                  "ProbeConfig", "FitRouterConfig", "DecodeConfig"}
    missing = [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)
               if not f.metadata.get("help")]
    assert missing == []


# ---------------------------------------------------------------- errors: user errors one line, bugs keep their traceback
@pytest.mark.parametrize("error", [ValueError("an internal bug"), KeyError("missing_key"), TypeError("a bug")])
def test_internal_bug_is_not_disguised_as_a_user_error(monkeypatch, capsys, error):
    import modetune.train.params

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(modetune.train.params, "count_parameters", broken)
    with pytest.raises(type(error)):
        main(["params", "--model", "default"])
    assert "error:" not in capsys.readouterr().err


def test_bad_input_errors_print_one_line(monkeypatch, capsys, tmp_path):
    import json as json_module

    import yaml

    import modetune.studies.run
    from modetune.utils.errors import ConfigError, DataError

    for error in (ConfigError("bad field"), DataError("bad record"), FileNotFoundError("no such file"),
                  IsADirectoryError("a folder"), json_module.JSONDecodeError("bad json", "{", 0),
                  yaml.YAMLError("bad yaml")):
        def broken(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(modetune.studies.run, "run_study", broken)
        fails(capsys, ["experiment", "variants", "--output-dir", str(tmp_path)], str(error).split(":")[0],
              command="experiment")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    fails(capsys, ["experiment", "variants", "--config", str(tmp_path / "bad.yaml")], "Malformed YAML",
          command="experiment")


def test_config_list_and_show_and_config_by_name(capsys):
    from modetune.utils.shipped import CONFIG_DIR, config_file

    assert main(["config", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ("default", "paper_llama7b", "paper_llama2_7b", "accelerate_fsdp", "deepspeed_zero3",
                 "experiments/commonsense"):
        assert f"{name} " in listing
    assert main(["config", "show", "paper_llama7b"]) == 0
    assert capsys.readouterr().out == (CONFIG_DIR / "paper_llama7b.yaml").read_text()
    assert config_file("configs/paper_llama7b.yaml").resolve() == config_file("paper_llama7b.yaml")  # path or name
    args = build_parser().parse_args(["train", "--config", "paper_llama7b", "--lora-r", "8"])
    config = config_from_args(args, TrainCommand).train
    assert (config.lora_r, config.num_epochs, config.warmup_steps) == (8, 3.0, 100)
    assert main(["config", "show", "nope"]) == 1
    assert "shipped config" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--version"], ["config", "list"]])
def test_quick_commands_import_no_torch(argv):
    """``--version`` and ``config list`` answer without importing torch, transformers, peft or accelerate
    (they took 6.4 s and 15 s while they did), in a fresh interpreter."""
    code = ("import sys\nfrom modetune.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]", out


def test_a_command_closes_the_process_group_it_ran_in(tmp_path, capsys):
    """Under ``torchrun`` the Trainer opens a gloo process group; a command leaves none open
    (left to the interpreter's shutdown, gloo's threads can abort a run that succeeded)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["config", "list"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
