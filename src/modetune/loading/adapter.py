"""An adapter folder checked as a whole, before any weight is copied.

:func:`check_adapter` checks every file an adapter folder holds: each JSON file for its syntax,
required keys and their types; each config against the weights beside it, read from the
safetensors header alone (names and shapes, no tensor data): ``mod_config.json`` against
``mod_model.safetensors`` (k members, hidden size, member norms, final norm),
``adapter_config.json`` against ``adapter_model.safetensors`` (rank, target modules, layers),
``train_config.json``'s LoRA rank against ``adapter_config.json``; the chat template must parse.
The first disagreement is one :class:`~modetune.utils.errors.DataError` line naming the file and
the field, e.g.
``mod_config.json says k=5 but mod_model.safetensors holds 3 members``.

Every command that loads an adapter goes through it: :class:`~modetune.loading.ModelSource` when it
is built (so before any output or model), :func:`~modetune.loading.load_source`, ``experiment``
before it reuses a run's adapter, and ``train --resume``, whose checkpoints are adapter folders too
(``train/rundir.checkpoint_damage`` runs :func:`file_problem` on each file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..mod.config import CONFIG_NAME as MOD_CONFIG
from ..mod.config import MoDConfig
from ..mod.model import ADAPTER_CONFIG as LORA_CONFIG
from ..mod.model import ADAPTER_WEIGHTS as LORA_WEIGHTS
from ..mod.model import WEIGHTS_NAME as MOD_WEIGHTS
from ..utils.errors import ConfigError, DataError, first_line
from ..utils.integrity import BASE_RECORD, read_json, read_text
from ..utils.models import BASE_MODEL_FILE as BASE_MODEL
from ..utils.prompts import PROMPT_FILE as PROMPT
from ..utils.prompts import STYLES

CHAT_TEMPLATE = "chat_template.jinja"  # the tokenizer's template, saved beside the adapter
TRAIN_CONFIG = "train_config.json"  # (= train.config.TRAIN_CONFIG_NAME; loading imports nothing of train/)
JSON_TYPES = {str: "text", int: "a whole number", float: "a number", bool: "true or false", list: "a list",
              dict: "a mapping", type(None): "null"}
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
Types = dict[str, tuple[type, ...]]  # a key of a JSON file -> the JSON types it may hold


def json_object(path: Path, required: Types | None = None, optional: Types | None = None) -> dict:
    """The JSON object in ``path``, each ``required`` key present and each key of ``required`` and
    ``optional`` of one of its JSON types; else :class:`DataError` naming the file and the key."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path} is damaged (expected a JSON object, got {type(data).__name__}).")
    missing = [key for key in required or {} if key not in data]
    if missing:
        raise DataError(f"{path} lacks the field {missing[0]!r}.")
    for key, kinds in {**(optional or {}), **(required or {})}.items():
        value = data.get(key)
        is_kind = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))  # JSON true is no number
        if key in data and not is_kind:
            wanted = " or ".join(JSON_TYPES[kind] for kind in kinds)
            raise DataError(f"{path}: field {key!r} must be {wanted}, got {value!r}.")
    return data


def header_shapes(path: Path) -> dict[str, list[int]]:
    """``{tensor name: shape}`` from a safetensors file's header (no tensor data is read);
    :class:`DataError` naming the file when it is missing, truncated or not safetensors."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise DataError(f"{path} is missing: the folder is incomplete.")
    try:
        with safe_open(str(path), framework="pt") as file:
            return {name: list(file.get_slice(name).get_shape()) for name in file.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise DataError(f"{path} is damaged (not a complete safetensors file: {first_line(error)}).") from None


def _pair(directory: Path, present: str, partner: str) -> None:
    if not (directory / partner).is_file():
        raise DataError(f"{directory / partner} is missing ({present} is there: the folder is incomplete).")


# ---------------------------------------------------------------------------- MoD: config against weights
def check_mod_config(directory: Path) -> None:
    """``mod_config.json``: its fields (:meth:`MoDConfig.load`), then ``k``, ``member_norms`` and
    ``train_final_norm`` against the names and shapes of ``mod_model.safetensors``."""
    config, _ = MoDConfig.load(directory)
    _pair(directory, MOD_CONFIG, MOD_WEIGHTS)
    shapes = header_shapes(directory / MOD_WEIGHTS)
    says = f"{directory}: {MOD_CONFIG} says"
    router = shapes.get("router.weight")
    if router is None or len(router) != 2:
        raise DataError(f"{directory}: {MOD_WEIGHTS} holds no router.weight of shape [k, hidden size] "
                        f"(its tensors: {', '.join(sorted(shapes)) or 'none'}).")
    members, hidden = router
    if members != config.k:
        raise DataError(f"{says} k={config.k} but {MOD_WEIGHTS} holds {members} members (router.weight is {router}).")
    unexpected = [name for name in shapes if name != "router.weight" and not name.startswith(("norms.", "final_norm."))]
    if unexpected:
        raise DataError(f"{directory}: {MOD_WEIGHTS} holds {unexpected[0]!r}, which no MoD config describes.")
    norms = {name.split(".")[1] for name in shapes if name.startswith("norms.")}
    wanted = config.k - 1 if config.member_norms else 0
    if len(norms) != wanted:
        raise DataError(f"{says} member_norms={str(config.member_norms).lower()} with k={config.k} ({wanted} member "
                        f"norms) but {MOD_WEIGHTS} holds {len(norms)}.")
    final = any(name.startswith("final_norm.") for name in shapes)
    if final != config.train_final_norm:
        raise DataError(f"{says} train_final_norm={str(config.train_final_norm).lower()} but {MOD_WEIGHTS} holds "
                        f"{'a' if final else 'no'} final norm.")
    wrong = [(name, shape) for name, shape in shapes.items() if name != "router.weight" and shape != [hidden]]
    if wrong:
        raise DataError(f"{directory}: {MOD_WEIGHTS} holds {wrong[0][0]} of shape {wrong[0][1]}, but its "
                        f"router.weight {router} reads hidden size {hidden}.")


def _weights_beside_config(directory: Path, weights: str, config: str) -> None:
    """A weights file: a complete safetensors file, with its config beside it."""
    header_shapes(directory / weights)
    _pair(directory, weights, config)


def check_mod_weights(directory: Path) -> None:
    """``mod_model.safetensors``: a complete safetensors file, with its ``mod_config.json``."""
    _weights_beside_config(directory, MOD_WEIGHTS, MOD_CONFIG)


# ---------------------------------------------------------------------------- LoRA: config against weights
def _targets(name: str, targets: list[str] | str) -> bool:
    """Whether peft's ``target_modules`` select module ``name`` (a list: by name or suffix; text: a regex)."""
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, name) is not None
    return any(name == target or name.endswith("." + target) for target in targets)


def _layer(module: str) -> int | None:
    found = re.search(r"\.(\d+)\.", f".{module}.")
    return int(found.group(1)) if found else None


def check_lora_config(directory: Path) -> None:
    """``adapter_config.json`` (peft): ``r``, ``target_modules`` and ``layers_to_transform`` against
    the LoRA weights' names and shapes in ``adapter_model.safetensors``."""
    path = directory / LORA_CONFIG
    config = json_object(path, optional={"peft_type": (str,)})
    if config.get("peft_type", "LORA") != "LORA":
        return  # another PEFT method: peft checks it
    config = json_object(path, {"r": (int,), "target_modules": (list, str)},
                         {"layers_to_transform": (int, list, type(None)), "rank_pattern": (dict, type(None))})
    _pair(directory, LORA_CONFIG, LORA_WEIGHTS)
    r, targets = config["r"], config["target_modules"]
    modules: dict[str, dict[str, list[int]]] = {}
    for name, shape in header_shapes(directory / LORA_WEIGHTS).items():
        if (found := LORA_KEY.match(name)) is not None:
            modules.setdefault(found["module"], {})[found["part"]] = shape
    says, holds = f"{directory}: {LORA_CONFIG}", f"{LORA_WEIGHTS} holds"
    if not modules:
        raise DataError(f"{directory}: {holds} no LoRA weights (lora_A / lora_B), though {LORA_CONFIG} is there.")
    for module, parts in modules.items():
        if set(parts) != {"A", "B"}:
            raise DataError(f"{directory}: {holds} lora_{'A' if 'A' in parts else 'B'} but not "
                            f"lora_{'B' if 'A' in parts else 'A'} for {module}.")
        rank = parts["A"][0]
        if parts["B"][-1] != rank or (not config.get("rank_pattern") and rank != r):
            raise DataError(f"{says} says r={r} but {holds} rank {rank} for {module} (lora_A is {parts['A']}, "
                            f"lora_B is {parts['B']}).")
        if not _targets(module, targets):
            raise DataError(f"{says}'s target_modules {targets} leave out {module}, which {holds} LoRA weights for.")
    if isinstance(targets, list):
        absent = [target for target in targets if not any(_targets(module, [target]) for module in modules)]
        if absent:
            raise DataError(f"{says}'s target_modules name {absent[0]!r} but {holds} no LoRA weights for it.")
    layers = config.get("layers_to_transform")
    if layers is not None:
        wanted, held = {layers} if isinstance(layers, int) else set(layers), {_layer(m) for m in modules}
        if held != wanted:
            raise DataError(f"{says}'s layers_to_transform is {sorted(wanted)} but {holds} LoRA weights in layers "
                            f"{sorted(held, key=lambda x: -1 if x is None else x)}.")


def check_lora_weights(directory: Path) -> None:
    """``adapter_model.safetensors``: a complete safetensors file, with its ``adapter_config.json``."""
    _weights_beside_config(directory, LORA_WEIGHTS, LORA_CONFIG)


# ---------------------------------------------------------------------------- the sidecar files
def check_base_model(directory: Path) -> None:
    """``base_model.json``: the base it was trained on, ``{"model": TEXT}`` (read when ``--model`` is left out)."""
    if not json_object(directory / BASE_MODEL, {"model": (str,)})["model"].strip():
        raise DataError(f"{directory / BASE_MODEL}: field 'model' is empty.")


def check_base_record(directory: Path) -> None:
    """``modetune_adapter.json``: a LoRA-only adapter's base fingerprint."""
    json_object(directory / BASE_RECORD, {"base_fingerprint": (str, type(None))})


def check_chat_template(text: str, where: str) -> None:
    """``text`` must be a non-empty Jinja template; :class:`DataError` naming ``where`` otherwise."""
    if not text.strip():
        raise DataError(f"{where} is empty (expected a Jinja chat template).")
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as error:
        raise DataError(f"{where} does not parse as Jinja (line {error.lineno}: {error.message}).") from None


def check_prompt(directory: Path) -> None:
    """``prompt.json``: the training ``prompt_style`` (one of the styles) and its ``chat_template``, if any."""
    path = directory / PROMPT
    data = json_object(path, {"prompt_style": (str,)}, {"chat_template": (str, type(None))})
    if data["prompt_style"] not in STYLES:
        raise DataError(f"{path}: field 'prompt_style' must be one of {', '.join(STYLES)}, "
                        f"got {data['prompt_style']!r}.")
    if data.get("chat_template") is not None:
        check_chat_template(data["chat_template"], f"{path}: field 'chat_template'")


def check_template_file(directory: Path) -> None:
    """``chat_template.jinja`` (saved with the tokenizer): UTF-8 text that parses as Jinja."""
    path = directory / CHAT_TEMPLATE
    check_chat_template(read_text(path, "chat template"), str(path))


def check_train_config(directory: Path) -> None:
    """``train_config.json`` (the run's settings, read by ``train --resume`` and ``experiment``):
    ``model``, ``preset`` and ``prompt_style`` present as text, the LoRA fields whole numbers; ``lora_r``
    as ``adapter_config.json``'s ``r`` (read only when it parses: its own check names it otherwise).
    Every other field is checked against ``TrainConfig`` by the commands that read it."""
    path = directory / TRAIN_CONFIG
    data = json_object(path, {"model": (str,), "preset": (str,), "prompt_style": (str,)},
                       {"lora_r": (int,), "lora_alpha": (int, float), "k": (int,)})
    lora = _parsed(directory / LORA_CONFIG)  # (its k says which layers count as the last k: a preset may change it)
    if "lora_r" in data and "r" in lora and data["lora_r"] != lora["r"]:
        raise DataError(f"{directory}: {TRAIN_CONFIG} says lora_r={data['lora_r']} but {LORA_CONFIG} says "
                        f"r={lora['r']}.")


def _parsed(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when it is missing or damaged (its own check names it)."""
    try:
        data = read_json(path) if path.is_file() else {}
    except DataError:
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------- the folder
CHECKS: dict[str, Callable[[Path], None]] = {  # each file of an adapter -> its check (in the order they run)
    MOD_CONFIG: check_mod_config, MOD_WEIGHTS: check_mod_weights, LORA_CONFIG: check_lora_config,
    LORA_WEIGHTS: check_lora_weights, BASE_RECORD: check_base_record, BASE_MODEL: check_base_model,
    TRAIN_CONFIG: check_train_config, PROMPT: check_prompt, CHAT_TEMPLATE: check_template_file,
}


def file_problem(path: str | Path) -> str | None:
    """Why the adapter file ``path`` is damaged or disagrees with its folder (``None``: it does not,
    or it is no adapter file): one line naming the file and the field."""
    path = Path(path)
    check = CHECKS.get(path.name)
    try:
        if check is not None:
            check(path.parent)
    except (DataError, ConfigError, FileNotFoundError) as error:
        return first_line(error)
    return None


def check_adapter(directory: str | Path) -> Path:
    """Check the adapter folder ``directory`` as a whole (see the module docstring) and return it;
    the first problem is one :class:`DataError` (a missing folder: :class:`FileNotFoundError`; a
    folder holding no adapter: :class:`ConfigError`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Adapter folder {directory} does not exist.")
    if not any((directory / name).is_file() for name in (MOD_CONFIG, MOD_WEIGHTS, LORA_CONFIG, LORA_WEIGHTS)):
        raise ConfigError(f"{directory} holds neither {MOD_CONFIG} (a MoD adapter) nor {LORA_CONFIG} "
                          "(a LoRA adapter).")
    for name, check in CHECKS.items():
        if (directory / name).is_file():
            check(directory)
    return directory
