"""The per-token router ``G(x) = softmax(TopK(x W_g + prior))``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import without_autocast


def route(logits: Tensor, top_k: int | None = None) -> Tensor:
    """Mixing weights from router logits: ``softmax(TopK(logits))`` over the last dim.

    Entries outside the ``top_k`` largest are set to ``-inf`` before the softmax, so their
    weight is exactly 0 and the kept ones are a softmax over themselves. ``top_k=None``
    (or ``>= k``) is dense routing.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        keep = logits.topk(top_k, dim=-1).indices
        mask = torch.full_like(logits, float("-inf")).scatter(-1, keep, 0.0)
        logits = logits + mask
    return logits.softmax(dim=-1)


def prior_logits(k: int, init: str, final_weight: float) -> Tensor:
    """Constant router logits at step 0.

    ``"uniform"``: zeros (weight ``1/k`` each). ``"final"``: ``a`` on the final member and 0
    elsewhere, with ``a = log(p (k-1) / (1-p))`` so that ``softmax`` gives it weight ``p``.
    """
    prior = torch.zeros(k)
    if init == "final" and k > 1:
        prior[-1] = math.log(final_weight * (k - 1) / (1.0 - final_weight))
    return prior


class Router(nn.Module):
    """``G(x) = softmax(TopK(x W_g + prior))`` with ``W_g`` (d x k, no bias) zero-initialised.

    Kept and computed in float32 whatever the model's dtype, autocast included; ``fixed`` (a member index)
    bypasses the learned weights and puts all weight on that member (logit-lens runs).
    """

    def __init__(self, hidden_size: int, k: int, init: str = "uniform", final_weight: float = 0.9,
                 top_k: int | None = None, fixed: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, hidden_size, dtype=torch.float32))
        self.register_buffer("prior", prior_logits(k, init, final_weight), persistent=False)
        self.top_k = top_k
        self.fixed = fixed
        if fixed is not None:
            self.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """``G = softmax(TopK(x W_g^T + prior))`` over the last dim, ``[..., d] -> [..., k]`` in float32."""
        if self.fixed is not None:
            weights = torch.zeros(*x.shape[:-1], self.weight.shape[0], device=x.device)
            return weights.index_fill_(-1, torch.tensor([self.fixed], device=x.device), 1.0)
        with without_autocast(x.device.type):  # autocast would run the linear map in bf16/fp16
            return route(F.linear(x.to(self.weight.dtype), self.weight) + self.prior, self.top_k)
