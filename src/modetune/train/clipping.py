"""Gradient clipping by parameter group: the scope of ``max_grad_norm``.

Two groups of trainable parameters: ``lora`` (everything the base model trains: LoRA, or
whatever a preset unfreezes) and ``mod`` (the router and the member norms,
:func:`~modetune.train.router_opt.router_parameters`). With ``c`` = ``max_grad_norm``:

- ``global`` (the Hugging Face Trainer's rule): ``n = sqrt(n_lora^2 + n_mod^2)``, and every
  gradient is scaled by ``min(1, c / (n + 1e-6))``. A large MoD gradient (the member norms'
  distillation) then shrinks LoRA's step too.
- ``per_group``: each group ``g`` is scaled by ``min(1, c / (n_g + 1e-6))`` on its own norm
  ``n_g``, so one group's gradients never change the other's.

``n_g = ||(grad_p)_{p in g}||_2`` is taken before clipping. The scale is applied by
:func:`torch.nn.utils.clip_grads_with_norm_`, which multiplies by exactly 1.0 when ``n_g <= c``:
a group within the bound is left bit for bit as it was.
"""

from __future__ import annotations

import torch
from torch import nn

from .router_opt import router_parameters

SCOPES = ("global", "per_group")
GROUPS = ("lora", "mod")  # the log keys are grad_norm_lora and grad_norm_mod


def clip_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters as ``{"lora": [...], "mod": [...]}`` (each parameter once)."""
    mod_ids = {id(p) for p in router_parameters(model)}
    groups: dict[str, list[nn.Parameter]] = {"lora": [], "mod": []}
    seen: set[int] = set()
    for param in model.parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            groups["mod" if id(param) in mod_ids else "lora"].append(param)
    return groups


def group_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """``||(grad_p)_p||_2`` over the parameters that have a gradient (0 when none has); a
    sharded (DTensor) norm is gathered into a plain tensor."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def group_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, torch.Tensor]:
    """The pre-clip gradient norm of each group."""
    return {name: group_norm(params) for name, params in groups.items()}


def clip_per_group(groups: dict[str, list[nn.Parameter]], max_norm: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip each group on its own norm (the module docstring's ``per_group``); returns the
    pre-clip norm of all groups together, ``sqrt(sum_g n_g^2)``, and each group's."""
    norms = group_norms(groups)
    for name, params in groups.items():
        with_grad = [p for p in params if p.grad is not None]
        if with_grad:
            torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, norms[name].to(with_grad[0].grad.device))
    total = torch.linalg.vector_norm(torch.stack([n.float().cpu() for n in norms.values()]))
    return total, norms
