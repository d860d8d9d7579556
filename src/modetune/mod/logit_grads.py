"""The vocabulary-sized element-wise part of the fused MoD loss, in cache-sized row blocks.

For one chunk of ``n`` tokens the members' logits ``l_i`` are ``[n, V]`` tensors (``V`` =
49152 for the default model: 48 MiB each at ``n = 256``). Every softmax, exponential and KL
term over them is a pass through memory; done over the whole chunk, each pass streams (and
each temporary newly allocates) tensors of that size through RAM. Here the passes run on blocks
of ``block`` rows (tokens) whose temporaries are allocated once and stay in the CPU cache, so
each logit is read from RAM about once and each gradient written once into the logits' own
memory. Each softmax takes one exponential per entry (its log-sum-exp comes with it), and row
dot products use ``linalg.vecdot`` (a batched matmul of ``1 x V`` rows was ~4x slower per entry
on CPU). Rows are independent, so the block size changes no formula, only the order in which
rows are visited (benchmarks/bench_loss_passes.py measures it).

Formulas (docs/method.md; ``P = softmax(l / tau)``, ``e = sum_i G_i l_i`` the ensemble logits):

- task: ``CE = -log softmax(e)_y`` and ``g = softmax(e) - onehot(y)`` (``dCE/de``);
  under soft-capping ``c tanh(x / c)`` also ``s_i = 1 - (l_i / c)^2`` and the per-member
  ``g s_i`` (``dCE/dx_i`` before the cap), and ``dG_i = <g, l_i>``;
- reverse ``KL(P_i || P_N)``: ``dKL/dl_i = P_i (log P_i - log P_N - KL) / tau``,
  teacher ``(P_N - P_i) / tau``; forward ``KL(P_N || P_i)``: student ``(P_i - P_N) / tau``,
  teacher ``P_N (log P_N - log P_i - KL) / tau`` (the ``1 / tau`` and the scale are left to
  the caller, applied after projecting); times ``s_i`` under soft-capping;
- each member's own cross-entropy ``-log softmax(l_i)_y`` (at temperature 1).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import MoDConfig

# Tokens per block on CPU when MoDConfig.row_block is 0: 8 rows of 49152 float32 logits are
# 1.5 MiB per temporary, so a block's ~8 temporaries stay in a server CPU's L2/L3 cache.
CPU_ROW_BLOCK = 8


def _vdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product ``<a_r, b_r>`` of ``[r, V]`` tensors."""
    return torch.linalg.vecdot(a, b)


def row_block_size(config: MoDConfig, n: int, device: torch.device) -> int:
    """Rows per block: ``config.row_block`` when set, else ``CPU_ROW_BLOCK`` on CPU and the
    whole chunk elsewhere (a GPU has no cache to fit, and many small kernels cost launches)."""
    if config.row_block > 0:
        return min(config.row_block, n)
    return min(CPU_ROW_BLOCK, n) if device.type == "cpu" else n


@dataclass
class LogitGrads:
    """Sums over the chunk and the ``[n, V]`` gradients w.r.t. the (pre-cap) member logits.

    ``task_grads``: one tensor ``g`` shared by every member (``dL/dl_i = G_i g``), or, under
    soft-capping, ``k`` tensors ``g s_i``. ``distill_grads``: per member, the distillation
    gradient (unscaled, see the module docstring) or ``None``; it reuses the member's logit
    memory, and so may ``task_grads``: the logits are consumed. ``d_weights`` = ``<g, l_i>``
    ``[n, k]``, computed only under soft-capping (otherwise the caller has a cheaper form).
    """

    task_sum: Tensor
    kl_sums: Tensor
    ce_sums: Tensor | None
    task_grads: list[Tensor] = field(default_factory=list)
    distill_grads: list[Tensor | None] = field(default_factory=list)
    d_weights: Tensor | None = None


def logit_grads(logits: list[Tensor], weights: Tensor, labels: Tensor, config: MoDConfig, softcap: float | None,
                distill: bool, members: bool, block: int) -> LogitGrads:
    """Values and gradients of the chunk's ``L_task`` and ``L_distill`` w.r.t. the member logits.

    ``logits`` are the ``k`` members' capped logits ``[n, V]`` (float32 or wider; overwritten),
    ``weights`` ``G`` ``[n, k]``; ``distill``: compute the KL terms; ``members``: each member's
    cross-entropy. With ``k = 1`` and ``weights`` all ones this is plain cross-entropy on one
    logit tensor (the one-projection path). ``kl_sums`` has ``k - 1`` entries when ``distill``.
    """
    k, (n, V) = len(logits), logits[0].shape
    dtype, device = logits[0].dtype, logits[0].device
    live_teacher = distill and not config.detach_teacher
    if softcap is not None:
        task_grads = [torch.empty_like(logits[0]) for _ in range(k)]
    else:  # g can take the place of the last member's logits unless those become the teacher's gradient
        task_grads = [torch.empty_like(logits[0]) if live_teacher else logits[-1]]
    sums = torch.zeros(1 + k + (k - 1), device=device, dtype=dtype)  # task, k CEs, k-1 KLs
    d_weights = torch.empty(n, k, device=device, dtype=dtype) if softcap is not None else None
    work = torch.empty(4 + int(live_teacher), min(block, n), V, device=device, dtype=dtype)  # reused per block
    with _one_thread(device, block < n):
        _blocks(logits, weights, labels, config, softcap, distill, members, block, work, task_grads, d_weights, sums)
    distill_grads: list[Tensor | None] = [None] * k
    if distill:
        distill_grads[: k - 1] = logits[: k - 1]
        if live_teacher:
            distill_grads[-1] = logits[-1]
    ce_sums = sums[1 : 1 + k] if members else None
    kl_sums = sums[1 + k :] if distill else sums.new_zeros(0)
    return LogitGrads(sums[0], kl_sums, ce_sums, task_grads, distill_grads, d_weights)


@contextmanager
def _one_thread(device: torch.device, blocked: bool):
    """Run the row blocks on one CPU thread: each block's ops are too small to share out, and on a
    busy machine every op would wait for a descheduled worker thread (two threads on a loaded 2-core
    machine: 20-40x slower, benchmarks/bench_loss_passes.py)."""
    threads = torch.get_num_threads()
    if not blocked or device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _blocks(logits: list[Tensor], weights: Tensor, labels: Tensor, config: MoDConfig, softcap: float | None,
            distill: bool, members: bool, block: int, work: Tensor, task_grads: list[Tensor],
            d_weights: Tensor | None, sums: Tensor) -> None:
    """The loop of :func:`logit_grads` over row blocks (arguments as there; ``work`` holds a block's
    temporaries, ``task_grads``, ``d_weights`` and ``sums`` receive the results)."""
    k, device = len(logits), labels.device
    live_teacher = distill and not config.detach_teacher
    for start in range(0, labels.numel(), block):
        rb = slice(start, start + block)
        ls, y = [lg[rb] for lg in logits], labels[rb]
        rows = torch.arange(y.numel(), device=device)
        e = work[0, : y.numel()]
        torch.mul(ls[0], weights[rb, :1], out=e)  # the ensemble logits
        for i in range(1, k):
            e.addcmul_(ls[i], weights[rb, i : i + 1])
        sech2 = None
        if softcap is not None:  # g first: dG needs the logits, which the distillation overwrites
            g = _softmax_grad(e, y, rows, e, sums)
            sech2 = [1.0 - (lg / softcap).square() for lg in ls]
            d_weights[rb] = torch.stack([_vdot(lg, g) for lg in ls], -1)
        if distill or members:
            _distill_block(ls, y, rows, config, sech2, distill, live_teacher, work[1:, : y.numel()], sums)
        if sech2 is None:  # written straight into its place (the last logits are read by now)
            _softmax_grad(e, y, rows, task_grads[0][rb], sums)
        else:
            for i in range(k):
                torch.mul(g, sech2[i], out=task_grads[i][rb])


def softmax_into(x: Tensor, tau: float, out: Tensor, normalise: bool = True) -> Tensor:
    """``out = softmax(x / tau)`` row-wise with one exponential per entry; returns
    ``logsumexp(x / tau)`` ``[r, 1]`` (so ``log softmax(x / tau) = x / tau - lse``).
    ``normalise=False`` leaves ``out`` holding the unnormalised ``exp((x - max x) / tau)``."""
    m = x.amax(-1, keepdim=True)
    torch.sub(x, m, out=out)
    if tau != 1.0:
        out.div_(tau)
        m = m / tau
    s = out.exp_().sum(-1, keepdim=True)
    if normalise:
        out.div_(s)
    return m + s.log()


def _softmax_grad(e: Tensor, y: Tensor, rows: Tensor, out: Tensor, sums: Tensor) -> Tensor:
    """``out = g = softmax(e) - onehot(y)`` (``out`` may be ``e``); adds ``-log softmax(e)_y =
    lse(e) - e_y`` to ``sums[0]``."""
    e_y = e[rows, y]
    sums[0] += (softmax_into(e, 1.0, out).view(-1) - e_y).sum()
    out[rows, y] -= 1.0
    return out


def _distill_block(ls: list[Tensor], y: Tensor, rows: Tensor, config: MoDConfig, sech2: list[Tensor] | None,
                   distill: bool, live_teacher: bool, work: Tensor, sums: Tensor) -> None:
    """One block's member CEs (into ``sums[1:1+k]``), KLs (into ``sums[1+k:]``) and distillation
    gradients, written over the block's logits ``ls`` (students; the teacher's when live).

    ``work`` holds the temporaries ``P_N``, ``P_i``, ``D = (l_i - l_N) / tau`` and the teacher's
    gradient. With ``c = lse_i - lse_N``: ``log P_i - log P_N = D - c``, so reverse
    ``KL = <P_i, D> - c`` and ``log P_i - log P_N - KL = D - <P_i, D>``; forward
    ``KL = c - <P_N, D>`` and ``log P_N - log P_i - KL = <P_N, D> - D``.
    """
    k, tau, reverse = len(ls), config.temperature, config.distill_direction == "reverse"
    p_t, p_s, D = work[0], work[1], work[2]
    if tau != 1.0 or not distill:  # the members' own cross-entropy, at temperature 1
        for i in range(k):
            sums[1 + i] += (torch.logsumexp(ls[i], -1) - ls[i][rows, y]).sum()
        if not distill:
            return
    lse_t = softmax_into(ls[-1], tau, p_t, normalise=live_teacher or not reverse)  # (P_N itself only if used)
    if tau == 1.0:
        sums[k] += (lse_t.view(-1) - ls[-1][rows, y]).sum()
    teacher = work[3].zero_() if live_teacher else None
    for i in range(k - 1):
        lse_s = softmax_into(ls[i], tau, p_s)
        if tau == 1.0:
            sums[1 + i] += (lse_s.view(-1) - ls[i][rows, y]).sum()
        torch.sub(ls[i], ls[-1], out=D)
        if tau != 1.0:
            D.div_(tau)
        a = _vdot(p_s if reverse else p_t, D)[:, None]
        kl = a - (lse_s - lse_t) if reverse else (lse_s - lse_t) - a
        if reverse:
            if teacher is not None:
                teacher.add_(p_t).sub_(p_s)
            torch.mul(D.sub_(a), p_s, out=ls[i])
        else:
            if teacher is not None:
                teacher.sub_(D.sub_(a).mul_(p_t))
            torch.sub(p_s, p_t, out=ls[i])
        sums[1 + k + i] += kl.sum()
        if sech2 is not None:
            ls[i].mul_(sech2[i])
    if teacher is not None:
        if sech2 is not None:
            teacher.mul_(sech2[-1])
        ls[-1].copy_(teacher)
