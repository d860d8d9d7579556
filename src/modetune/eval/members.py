"""Ensemble members: finding the MoD model, naming members, and forcing one member's routing.

``--member i`` and ``--members all|0,2,ensemble`` (:func:`parse_members`) name routings;
:func:`forced_member` routes every token to one member through the router's ``fixed``
switch, so ``generate`` (KV cache, beams) and any other caller work unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ..mod.model import find_mod
from ..utils.errors import ConfigError


def member_names(model: nn.Module) -> list[str]:
    """Labels of the ensemble members, shallow to final: ``member0 .. member{k-1}``."""
    mod = find_mod(model)
    return [] if mod is None else [f"member{i}" for i in range(mod.mod_config.k)]


def describe_member(model: nn.Module, member: int) -> str:
    """``"member1 = layer 29 of 30 (N-1)"`` (layers counted from 1)."""
    mod = find_mod(model)
    layer = mod.member_layers[member] + 1
    n = mod.parts.num_layers
    return f"member{member} = layer {layer} of {n} ({'N' if layer == n else f'N-{n - layer}'})"


def member_index(model: nn.Module, member: int) -> int:
    """``member`` as an index in ``0..k-1`` (``-1`` = the final member); ``ConfigError`` when the
    model has no ensemble or the index is out of range."""
    mod = find_mod(model)
    if mod is None:
        raise ConfigError("--member needs a MoD model (an adapter folder with mod_config.json).")
    k = mod.mod_config.k
    if not -k <= member < k:
        raise ConfigError(f"member must be in 0..{k - 1} (shallow to final) or -{k}..-1, got {member}.")
    return member % k


@contextlib.contextmanager
def forced_member(model: nn.Module, member: int | None) -> Iterator[None]:
    """Route every token to one member (``None``: the model as it is).

    Member ``i``'s logits are then ``head(N_i(h_i))``: its own norm and the shared head, via
    the router's ``fixed`` switch, so ``generate`` (KV cache, beams) works unchanged.
    """
    if member is None:
        yield
        return
    index = member_index(model, member)
    router = find_mod(model).router
    previous = router.fixed
    router.fixed = index
    try:
        yield
    finally:
        router.fixed = previous


def variant_name(model: nn.Module, member: int | None) -> str:
    """The label of a routing in results: ``model`` (no ensemble), ``ensemble``, ``member<i>``."""
    if member is None:
        return "ensemble" if find_mod(model) is not None else "model"
    return f"member{member_index(model, member)}"


def parse_members(member: int | None = None, members: str | None = None, model: nn.Module | None = None
                  ) -> list[int | None] | None:
    """CLI ``--member i`` / ``--members all|0,2,ensemble`` -> :attr:`EvalConfig.members`."""
    if member is not None and members is not None:
        raise ConfigError("Give --member or --members, not both.")
    if member is not None:
        return [member]
    if members is None:
        return None
    if members.strip().lower() == "all":
        if model is None or find_mod(model) is None:
            raise ConfigError("--members all needs a MoD model (an adapter folder with mod_config.json).")
        return [*range(find_mod(model).mod_config.k), None]
    out: list[int | None] = []
    for part in members.split(","):
        part = part.strip().lower()
        if part in ("ensemble", "model", "main"):
            out.append(None)
        else:
            try:
                out.append(int(part.removeprefix("member")))
            except ValueError:
                raise ConfigError(f"--members: {part!r} is not a member index, 'ensemble' or 'all'.") from None
    return out
