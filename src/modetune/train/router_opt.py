"""The router's own learning rate and the router warm-up (issue 15).

- ``router_lr``: the router and the member norms (and the final norm when ``train_final_norm``)
  form their own AdamW parameter groups at ``router_lr``; everything else trainable (LoRA)
  stays at ``learning_rate``. Both follow the run's schedule (warm-up, then decay), each
  scaled from its own peak.
- ``router_warmup_steps = W``: during optimizer steps ``0 .. W-1`` only the router groups
  train. The body's parameters get ``requires_grad = False`` for those steps, so no gradient
  reaches them (and the backward pass stops at the member states): AdamW skips a parameter
  whose gradient is ``None``, so neither the update, the weight decay, the moments nor the
  step count of a frozen parameter move. From step ``W`` on, joint tuning: the body's
  schedule starts then, ``lr_body(t) = learning_rate * s_{T-W}(t - W)`` for ``t >= W`` (0
  before), where ``s_n`` is the run's schedule over ``n`` steps; the router keeps
  ``router_lr * s_T(t)``. Both depend on the global step alone, so a resumed run is in the
  same phase with the same rates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import TrainerCallback

from ..mod.model import find_mod

ROUTER, BODY = "router", "body"
GROUP_KEY = "modetune_group"  # the name of each optimizer group: ROUTER or BODY


def router_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable MoD parameters of ``model`` (:meth:`MoDModel.mod_parameters`; none without MoD):
    what ``router_lr`` drives and ``clip_scope per_group`` clips apart."""
    mod = find_mod(model)
    return [] if mod is None else mod.mod_parameters()


def optimizer_groups(model: nn.Module, learning_rate: float, router_lr: float | None, weight_decay: float,
                     decay_names: set[str]) -> list[dict]:
    """AdamW parameter groups: (router | body) x (decayed | not), empty groups dropped.

    Every trainable parameter lies in exactly one group; the router groups hold exactly
    :func:`router_parameters` at ``router_lr`` (``learning_rate`` when ``None``). Weight decay
    follows the Trainer's rule (``decay_names``: no decay on norms and biases).
    """
    router_ids = {id(p) for p in router_parameters(model)}
    seen: set[int] = set()
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        key = (ROUTER if id(param) in router_ids else BODY, name in decay_names)
        buckets.setdefault(key, []).append(param)
    rates = {ROUTER: learning_rate if router_lr is None else router_lr, BODY: learning_rate}
    return [{"params": params, "lr": rates[group], "weight_decay": weight_decay if decays else 0.0, GROUP_KEY: group}
            for (group, decays), params in sorted(buckets.items()) if params]


def shifted_lambdas(optimizer: torch.optim.Optimizer, router_fn: Callable[[int], float],
                    body_fn: Callable[[int], float], warmup: int) -> list[Callable[[int], float]]:
    """One learning-rate multiplier per group: ``router_fn(t)`` for the router groups,
    ``0`` for ``t < warmup`` and ``body_fn(t - warmup)`` after for the body groups."""

    def body(step: int) -> float:
        return 0.0 if step < warmup else body_fn(step - warmup)

    def router(step: int) -> float:
        return router_fn(step)

    return [router if group.get(GROUP_KEY) == ROUTER else body for group in optimizer.param_groups]


def warmup_scheduler(args, optimizer: torch.optim.Optimizer, total_steps: int, warmup: int):
    """A ``LambdaLR`` whose body groups start their schedule (``args``' type and warm-up) at step ``warmup``."""
    from transformers import get_scheduler

    def schedule(n: int) -> Callable[[int], float]:
        made = get_scheduler(args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.get_warmup_steps(n),
                             num_training_steps=n, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        if not isinstance(made, torch.optim.lr_scheduler.LambdaLR):
            from ..utils.errors import ConfigError

            raise ConfigError(f"router_warmup_steps needs a step-based lr_scheduler, not {args.lr_scheduler_type!r}.")
        return made.lr_lambdas[0]

    router_fn, body_fn = schedule(total_steps), schedule(max(1, total_steps - warmup))
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, shifted_lambdas(optimizer, router_fn, body_fn, warmup))


class RouterWarmup(TrainerCallback):
    """Freeze the body (every trainable parameter outside the router groups) for the first
    ``steps`` optimizer steps, by the global step, so a resumed run is in the right phase."""

    def __init__(self, body: list[nn.Parameter], steps: int) -> None:
        self.body = body
        self.steps = steps

    def _apply(self, step: int) -> None:
        frozen = step < self.steps
        for param in self.body:
            param.requires_grad_(not frozen)

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self._apply(self.steps)  # leave the model as it was built: everything trainable


def body_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters outside :func:`router_parameters` (LoRA, and anything else the preset trains)."""
    router_ids = {id(p) for p in router_parameters(model)}
    unique = {id(p): p for p in model.parameters()}.values()
    return [p for p in unique if p.requires_grad and id(p) not in router_ids]
