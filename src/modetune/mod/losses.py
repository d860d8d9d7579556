"""The MoD objective ``L = L_task + lambda * L_distill``, fused and chunked, plus its naive reference.

Notation (docs/method.md): members ``i = 1..k`` (the last is the final layer ``N``), pre-norm states
``h_i``, norms ``N_i``, shared head ``phi(z) = z W^T + b``, member logits
``l_i = cap(phi(N_i(h_i)))`` (``cap`` = optional soft-capping ``c * tanh(x / c)``),
router weights ``G = route(x W_g + prior)`` and ensemble logits ``l = sum_i G_i l_i``.

- ``L_task = (1/n) sum_t CE(l_t, y_t)`` over the ``n`` labelled tokens.
- ``L_distill = (1/n) sum_t sum_{i<k} KL(P_i || P_N)`` (``"reverse"``) or ``KL(P_N || P_i)``
  (``"forward"``), ``P_i = softmax(l_i / tau)``; the teacher ``P_N`` detached by default.

``fused_mod_loss`` computes it chunk by chunk over tokens, and computes each chunk's
input gradients in the forward pass (as fused linear-cross-entropy kernels do), so no
``[tokens, V]`` tensor outlives its chunk. Gradients of the vocabulary-sized part are
written by hand (below); the small norm and router graphs use autograd per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MoDConfig
from .ensemble import autocast_dtype, head_logits, without_autocast
from .logit_grads import logit_grads, row_block_size


@dataclass
class MoDLossOutput:
    """``loss`` = ``task + lambda * distill.sum()``; ``distill`` has one entry per non-final
    member; ``member_ce`` is each member's own cross-entropy (``None`` when not computed)."""

    loss: Tensor
    task: Tensor
    distill: Tensor
    member_ce: Tensor | None
    weights: Tensor | None = None  # the router weights G at the labelled tokens, [n, k] (detached)


@dataclass
class HeadSpec:
    """The frozen shared head ``phi`` and the optional final-logit soft-capping."""

    weight: Tensor
    bias: Tensor | None = None
    softcap: float | None = None

    def logits(self, z: Tensor) -> Tensor:
        """``cap(z W^T + b)`` in float32 (the projection itself in the weight's dtype)."""
        return head_logits(z, self.weight, self.bias, self.softcap)


def projection_dtype(weight: Tensor) -> torch.dtype:
    """The dtype of the head projections: the autocast dtype when autocast is on, else ``weight.dtype``.
    Everything else of the loss (log-softmax, CE, KL and their gradients) runs in float32."""
    return autocast_dtype(weight.device.type) or weight.dtype


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row ``KL(P || Q) = sum_v P (log P - log Q)``."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def naive_mod_loss(hs: list[Tensor], router_input: Tensor | None, labels: Tensor, norms: list[nn.Module],
                   router: nn.Module, head: HeadSpec, config: MoDConfig, normaliser: float | None = None,
                   ) -> MoDLossOutput:
    """Reference: materialise every member's logits and let autograd do the rest.

    ``hs`` are the members' pre-norm states ``[n, d]`` (shallow to final) at labelled
    positions, ``labels`` ``[n]``; ``router_input=None`` routes on ``N_p(h_N)``.
    """
    normaliser = normaliser or labels.numel()
    zs = [norm(h) for norm, h in zip(norms, hs)]
    logits = [head.logits(z) for z in zs]
    weights = router(zs[-1] if router_input is None else router_input)
    ensemble = sum(weights[:, i : i + 1] * logits[i] for i in range(len(hs)))
    task = F.cross_entropy(ensemble, labels, reduction="sum") / normaliser
    member_ce = torch.stack([F.cross_entropy(lg.detach(), labels, reduction="sum") / normaliser for lg in logits])
    if not config.distill_through_body:
        logits = [head.logits(norm(h.detach())) for norm, h in zip(norms, hs)]
    tau = config.temperature
    if config.distill_lambda == 0:  # the "without L_distill" ablation: no KL is computed
        return MoDLossOutput(task, task.detach(), task.new_zeros(0), member_ce, weights.detach())
    teacher = F.log_softmax(logits[-1] / tau, -1)
    if config.detach_teacher:
        teacher = teacher.detach()
    kls = []
    for student_logits in logits[:-1]:
        student = F.log_softmax(student_logits / tau, -1)
        pair = (student, teacher) if config.distill_direction == "reverse" else (teacher, student)
        kls.append(_kl_rows(*pair).sum() / normaliser)
    distill = torch.stack(kls) if kls else task.new_zeros(0)
    loss = task + config.distill_lambda * distill.sum()
    return MoDLossOutput(loss, task.detach(), distill.detach(), member_ce, weights.detach())


def _chunk_grads(zs: list[Tensor], weights: Tensor, labels: Tensor, head: HeadSpec, config: MoDConfig,
                 scale: float, want_members: bool = False, need_grad: bool = True):
    """Values and hand-written gradients of one chunk, w.r.t. member states ``z_i`` and weights ``G``.

    With ``g = (softmax(l) - onehot(y)) * scale`` (``scale = 1/n``):
    ``dL_task/dl_i = G_i g`` and ``dL_task/dG_i = <g, l_i> = <g W, z_i> + <g, b>`` (an ``[n, d]``
    product instead of an ``[n, V]`` one; soft-capping needs the explicit form).
    Reverse KL, student ``i``: ``dKL/dl_i = P_i (log P_i - log P_N - KL) / tau``, teacher
    ``(P_N - P_i) / tau``. Forward KL: student ``(P_i - P_N) / tau``, teacher
    ``P_N (log P_N - log P_i - KL) / tau``. ``dz = dl W`` (times ``1 - (l/c)^2`` first under
    soft-capping); constant factors are applied to the ``[n, d]`` results, not to ``[n, V]``.
    The element-wise ``[n, V]`` part runs in cache-sized row blocks (:mod:`modetune.mod.logit_grads`).

    Returns the task CE sum, per-member KL sums, per-member CE sums (``None`` on the
    one-projection path), task ``dz`` list, distillation ``dz`` list, ``dG``.
    """
    k, cap, W = len(zs), head.softcap, head.weight
    distill = config.distill_lambda > 0 and k > 1
    block = row_block_size(config, labels.numel(), labels.device)
    if distill or cap is not None or want_members:  # (want_members: report each member's CE)
        logits = [head.logits(z) for z in zs]  # k x [n, V], consumed by logit_grads
        out = logit_grads(logits, weights, labels, config, cap, distill, True, block)
    else:  # the exact one-projection shortcut: sum_i G_i phi(z_i) = phi(sum_i G_i z_i)
        mixed = torch.einsum("nk,knd->nd", weights.to(zs[0].dtype), torch.stack(zs))
        ensemble = head.logits(mixed)
        out = logit_grads([ensemble], ensemble.new_ones(labels.numel(), 1), labels, config, None, False, False, block)
    dz_task: list[Tensor | None] = [None] * k  # (with need_grad false: values only, no gradient projections)
    dz_distill: list[Tensor | None] = [None] * k
    d_weights = None
    if not need_grad:
        return out.task_sum, out.kl_sums, out.ce_sums, dz_task, dz_distill, d_weights
    if cap is None:
        g = out.task_grads[0]
        gW = (g.to(W.dtype) @ W).mul_(scale)
        g_bias = (g @ head.bias.to(g.dtype)) * scale if head.bias is not None else 0.0
        acc = torch.promote_types(gW.dtype, torch.float32)
        d_weights = torch.stack([(gW.to(acc) * z.to(acc)).sum(-1).to(g.dtype) + g_bias for z in zs], -1)
        dz_task = [weights[:, i : i + 1].to(W.dtype) * gW for i in range(k)]
    else:
        d_weights = out.d_weights * scale
        dz_task = [(tg.to(W.dtype) @ W).mul_(weights[:, i : i + 1].to(W.dtype) * scale)
                   for i, tg in enumerate(out.task_grads)]
    coef = config.distill_lambda * scale / config.temperature
    for i, d in enumerate(out.distill_grads):  # (one entry on the one-projection path)
        if d is not None:
            dz_distill[i] = (d.to(W.dtype) @ W).mul_(coef)
    return out.task_sum, out.kl_sums, out.ce_sums, dz_task, dz_distill, d_weights


def _run_chunks(hs, router_input, labels, norms, router, head, config, normaliser, params, need_grad):
    """Loop over token chunks: values, and gradients w.r.t. ``hs``, ``router_input`` and ``params``."""
    k, n = len(hs), labels.numel()
    scale = 1.0 / normaliser
    dtype = torch.promote_types(head.weight.dtype, torch.float32)
    task = torch.zeros((), device=labels.device, dtype=dtype)
    kls = torch.zeros(k - 1 if config.distill_lambda > 0 else 0, device=labels.device, dtype=dtype)
    ce = torch.zeros(k, device=labels.device, dtype=dtype)
    grad_hs = [torch.zeros_like(h) for h in hs] if need_grad else None
    grad_r = torch.zeros_like(router_input) if need_grad and router_input is not None else None
    grad_params = [torch.zeros_like(p) for p in params] if need_grad else None
    # member logits are computed (and their CE reported) when the loss needs them, and in evaluation
    member_stats = config.distill_lambda > 0 or head.softcap is not None or not need_grad
    all_weights = []
    for start in range(0, n, config.chunk_size):
        sl = slice(start, start + config.chunk_size)
        with torch.enable_grad():
            h_in = [h[sl].detach().requires_grad_(need_grad) for h in hs]
            zs = [norm(h) for norm, h in zip(norms, h_in)]
            r_in = None if router_input is None else router_input[sl].detach().requires_grad_(need_grad)
            weights = router(zs[-1] if r_in is None else r_in)
        all_weights.append(weights.detach())
        with torch.no_grad(), without_autocast(labels.device.type):  # the loss arithmetic stays in float32
            t, kl, mce, dz_task, dz_distill, d_weights = _chunk_grads(
                [z.detach() for z in zs], weights.detach(), labels[sl], head, config, scale, member_stats, need_grad)
        task += t
        kls += kl
        if mce is not None:
            ce += mce
        if not need_grad:
            continue
        outputs, grads = [weights], [d_weights]
        for i in range(k):
            if dz_distill[i] is None or config.distill_through_body:
                dz = dz_task[i] if dz_distill[i] is None else dz_task[i] + dz_distill[i]
                outputs.append(zs[i])
                grads.append(dz.to(zs[i].dtype))
            else:  # L_distill reaches the norm's parameters only: a second norm call on detached input
                with torch.enable_grad():  # (Function.forward runs with grad mode off)
                    outputs += [zs[i], norms[i](h_in[i].detach())]
                grads += [dz_task[i].to(zs[i].dtype), dz_distill[i].to(zs[i].dtype)]
        inputs = [*h_in, *([r_in] if r_in is not None else []), *params]
        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
        got = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)
        for i in range(k):
            if got[i] is not None:
                grad_hs[i][sl] += got[i]
        offset = k
        if r_in is not None:
            if got[k] is not None:
                grad_r[sl] += got[k]
            offset += 1
        for acc, g in zip(grad_params, got[offset:]):
            if g is not None:
                acc += g
    stats = (task * scale, kls * scale, torch.cat(all_weights), ce * scale if member_stats else None)
    return stats, grad_hs, grad_r, grad_params


class _FusedMoDLoss(torch.autograd.Function):
    """Autograd wrapper: the gradients are computed in ``forward`` and scaled in ``backward``."""

    @staticmethod
    def forward(ctx, closure, n_hs: int, has_r: bool, *tensors):
        hs = list(tensors[:n_hs])
        router_input = tensors[n_hs] if has_r else None
        params = list(tensors[n_hs + int(has_r):])
        need_grad = any(ctx.needs_input_grad[3:])
        (task, kls, weights, ce), grad_hs, grad_r, grad_params = closure(hs, router_input, params, need_grad)
        loss = task + closure.lam * kls.sum()
        if need_grad:
            ctx.save_for_backward(*grad_hs, *([grad_r] if has_r else []), *grad_params)
        extras = [task, kls, weights] + ([ce] if ce is not None else [])
        ctx.mark_non_differentiable(*extras)
        return (loss, *extras)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        return (None, None, None, *[g * grad_loss for g in ctx.saved_tensors])


class _Closure:
    """The non-tensor arguments of :func:`_run_chunks`, bound once so the autograd Function only sees tensors."""

    def __init__(self, labels, norms, router, head, config, normaliser):
        self.args = (labels, norms, router, head, config, normaliser)
        self.lam = config.distill_lambda

    def __call__(self, hs, router_input, params, need_grad):
        labels, norms, router, head, config, normaliser = self.args
        return _run_chunks(hs, router_input, labels, norms, router, head, config, normaliser, params, need_grad)


def fused_mod_loss(hs: list[Tensor], router_input: Tensor | None, labels: Tensor, norms: list[nn.Module],
                   router: nn.Module, head: HeadSpec, config: MoDConfig, normaliser: float | None = None,
                   ) -> MoDLossOutput:
    """Chunked MoD loss with the same contract as :func:`naive_mod_loss` (see module docstring).

    Gradients flow to ``hs``, ``router_input`` and every trainable parameter of ``norms``
    and ``router``; the head is frozen. Mixed precision (:mod:`modetune.utils.precision`): the head
    projections run in the weights' dtype, or the autocast dtype under autocast; the router,
    the softmaxes, CE, KL and their gradients stay in float32, with autocast switched off.
    """
    if head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad):
        raise ValueError("The MoD loss keeps the shared LM head frozen, but its weight requires grad.")
    normaliser = float(normaliser or labels.numel())
    compute = projection_dtype(head.weight)  # under autocast: one cast of the head, not one per chunk
    if compute != head.weight.dtype:
        head = HeadSpec(head.weight.to(compute), None if head.bias is None else head.bias.to(compute), head.softcap)
    seen, params = set(), []
    for module in [*norms, router]:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    closure = _Closure(labels, norms, router, head, config, normaliser)
    if not torch.is_grad_enabled():  # evaluation: values only, no gradient work
        (task, kls, weights, ce), *_ = closure(hs, router_input, params, need_grad=False)
        return MoDLossOutput(task + config.distill_lambda * kls.sum(), task, kls, ce, weights)
    has_r = router_input is not None
    tensors = [*hs, *([router_input] if has_r else []), *params]
    out = _FusedMoDLoss.apply(closure, len(hs), has_r, *tensors)
    loss, task, kls = out[:3]
    return MoDLossOutput(loss, task, kls, out[4] if len(out) > 4 else None, out[3])
