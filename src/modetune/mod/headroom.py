"""The maths of `modetune probe`: how much a late-layer logit ensemble could gain, per token.

Notation: for labelled token ``t`` with label ``y_t``, member ``i`` (of ``k``) predicts logits
``l_{t,i} in R^V``. A convex mix ``w in Δ_k`` (``w >= 0``, ``sum w = 1``) predicts
``softmax(sum_i w_i l_{t,i})`` with cross-entropy

    CE_t(w) = logsumexp_v(sum_i w_i l_{t,i,v}) - sum_i w_i l_{t,i,y_t},

which is convex in ``w`` (a log-sum-exp of an affine map minus a linear term), with gradient
``dCE_t/dw_i = E_{v ~ p_t(w)}[l_{t,i,v}] - l_{t,i,y_t}``. Subtracting a constant ``c_{t,i}``
from member ``i``'s logits adds ``-sum_i w_i c_{t,i}`` to every mix logit, so CE is unchanged:
logits are stored shifted by each member's maximum.

**A candidate set, exact at the members.** On a CPU the full vocabulary is too large to
optimise over for thousands of tokens many times, so the optimisers work on ``C`` candidate
entries per token (the ``C`` largest of ``max_i l_{t,i,v}``) plus one *tail* column holding each
member's ``logsumexp`` over the rest, ``T_{t,i}``. The surrogate

    CE~_t(w) = logsumexp(sum_i w_i l_{t,i,c} for c in C; sum_i w_i T_{t,i}) - sum_i w_i l_{t,i,y_t}

equals ``CE_t`` at every vertex ``w = e_i`` and bounds it from above elsewhere (Hölder:
``sum_{v in tail} exp(sum_i w_i l_{t,i,v}) <= prod_i (sum_{v in tail} exp(l_{t,i,v}))^{w_i}``),
and it is convex in ``w`` too. Every number reported is then re-scored with the exact
full-vocabulary CE (:func:`exact_mix_ce`); the surrogate only guides the search.

Quantities (all means over tokens, nats/token; those marked *oracle* use the label and are
upper bounds on what any router could do, not achievable numbers):
- member CE ``mean_t CE_t(e_i)``;
- oracle pick ``mean_t min_i CE_t(e_i)`` (*oracle*);
- oracle mix ``mean_t min_{w in Δ} CE_t(w)`` (*oracle*; per token, by projected Newton);
- best global mix ``min_{w in Δ} mean_t CE_t(w)`` (one ``w`` for every token; no label per token;
  found on the candidate surrogate, then solved on the full vocabulary, :func:`exact_global_mix`);
- a fitted router ``G(x) = softmax(x̃ W + b)`` (the method's form, ``x̃`` the standardised
  final normalised state), trained on some tokens and scored on others (achievable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

CHUNK = 128  # tokens per chunk: [CHUNK, k, V] float32 is the largest temporary of an exact pass


@dataclass
class MemberLogits:
    """Per labelled token: ``logits[t, i, :]``, member ``i``'s logits shifted by their maximum at the
    candidate entries (the last column: the tail's logsumexp, absent with the full vocabulary),
    and ``label[t, i]``, the shifted logit of the label (exact)."""

    logits: Tensor
    label: Tensor

    @staticmethod
    def from_logits(logits: Tensor, labels: Tensor, candidates: int | None = None) -> MemberLogits:
        """From ``[n, k, V]`` logits and ``[n]`` labels; ``candidates`` (``C < V``) keeps the top
        ``C`` entries of ``max_i l_{t,i,v}`` and a tail column, ``None`` the whole vocabulary."""
        logits = logits.float()
        shifted = logits - logits.amax(-1, keepdim=True)
        k, vocab = logits.shape[1], logits.shape[2]
        label = shifted.gather(-1, labels.view(-1, 1, 1).expand(-1, k, 1)).squeeze(-1)
        if candidates is None or candidates >= vocab:
            return MemberLogits(shifted, label)
        top = shifted.amax(1).topk(candidates, -1).indices
        kept = shifted.gather(-1, top[:, None, :].expand(-1, k, -1))
        tail = shifted.scatter(-1, top[:, None, :].expand(-1, k, -1), float("-inf")).logsumexp(-1)
        return MemberLogits(torch.cat([kept, tail[..., None]], -1), label)

    @staticmethod
    def cat(parts: list[MemberLogits]) -> MemberLogits:
        return MemberLogits(torch.cat([p.logits for p in parts]), torch.cat([p.label for p in parts]))

    def __len__(self) -> int:
        return self.label.shape[0]

    @property
    def k(self) -> int:
        return self.label.shape[1]

    def select(self, rows: Tensor) -> MemberLogits:
        return MemberLogits(self.logits[rows], self.label[rows])

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[slice, Tensor, Tensor]]:
        """``(rows, logits [n, k, C], label logits [n, k])`` chunk by chunk."""
        for start in range(0, len(self), size):
            rows = slice(start, min(start + size, len(self)))
            yield rows, self.logits[rows], self.label[rows]


def exact_mix_ce(exact: Callable[[Tensor], MemberLogits], index: Tensor, weights: dict[str, Tensor]
                 ) -> dict[str, Tensor]:
    """Full-vocabulary ``CE_t(w_t)`` for the tokens ``index``, for several weightings at once (each
    ``[len(index), k]`` or ``[k]``); ``exact(tokens)`` gives those tokens' full-vocabulary
    :class:`MemberLogits`."""
    n = len(index)
    out = {name: torch.empty(n) for name in weights}
    for start in range(0, n, CHUNK):
        rows = slice(start, min(start + CHUNK, n))
        part = exact(index[rows])
        for name, w in weights.items():
            out[name][rows] = mix_ce(part.logits, part.label, w if w.dim() == 1 else w[rows])[0]
    return out


def mix_ce(logits: Tensor, label: Tensor, weights: Tensor, grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """``CE_t(w_t)`` per token for ``[n, k, V]`` logits, ``[n, k]`` label logits and weights
    ``[n, k]`` (or ``[k]``); with ``grad``, also ``dCE_t/dw = E_p[l_i] - l_{i,y}`` as ``[n, k]``."""
    weights = weights.expand(label.shape)
    mix = torch.einsum("nk,nkv->nv", weights, logits)
    lse = torch.logsumexp(mix, -1)
    ce = lse - (weights * label).sum(-1)
    if not grad:
        return ce, None
    p = torch.exp(mix - lse[:, None])
    return ce, torch.einsum("nv,nkv->nk", p, logits) - label


def member_ce(members: MemberLogits) -> Tensor:
    """``CE_t(e_i)`` as ``[n, k]``: ``logsumexp_v l_{t,i,v} - l_{t,i,y_t}``."""
    out = torch.empty_like(members.label)
    for rows, logits, label in members.chunks():
        out[rows] = torch.logsumexp(logits, -1) - label
    return out


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v`` onto the simplex (Duchi et al. 2008):
    ``w = max(v - τ, 0)`` with ``τ`` chosen so that ``sum w = 1``."""
    u = v.sort(-1, descending=True).values
    css = u.cumsum(-1) - 1
    ind = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    rho = ((u - css / ind) > 0).sum(-1, keepdim=True).clamp_min(1)
    tau = css.gather(-1, rho - 1) / rho
    w = (v - tau).clamp_min(0)
    # a huge step (|v| ~ 1e8 in float32) rounds v - tau to 0 everywhere: such a row goes to its largest coordinate
    vertex = torch.nn.functional.one_hot(v.argmax(-1), v.shape[-1]).to(v.dtype)
    return torch.where(w.sum(-1, keepdim=True) > 0.5, w, vertex)


def _newton_directions(logits: Tensor, label: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(d, d_face, g)``: Newton steps of ``CE_t`` on the plane ``sum w = 1`` (over every
    coordinate, and over the face of the coordinates with ``w_i > 0``, the others held at 0) and
    the gradient. With ``p = softmax(sum_i w_i l_i)``, ``g = E_p[l] - l_y`` and ``H = Cov_p(l)``;
    ``d`` solves ``[[H + εI, 1], [1ᵀ, 0]] [d; μ] = [-g; 0]`` on the chosen coordinates."""
    mix = torch.einsum("nk,nkv->nv", w, logits)
    p = torch.softmax(mix, -1)
    mean = torch.einsum("nv,nkv->nk", p, logits)
    second = torch.einsum("nkv,njv->nkj", logits * p[:, None, :], logits)
    # float64 from here: the ridge εI keeps H + εI definite only where the arithmetic resolves ε next to H (in
    # float32 a token whose members agree gave a numerically singular system, depending on the thread count)
    hess = (second - mean[:, :, None] * mean[:, None, :]).double()
    n, k = w.shape
    hess = hess + 1e-6 * hess.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-6)[:, None, None] * torch.eye(
        k, dtype=torch.float64)
    grad = mean - label
    steps = []
    for free in (torch.ones_like(w, dtype=torch.float64), (w > 0).double()):
        system = torch.zeros(n, k + 1, k + 1, dtype=torch.float64)
        pair = free[:, :, None] * free[:, None, :]
        system[:, :k, :k] = hess * pair + torch.diag_embed(1 - free)
        system[:, :k, k] = system[:, k, :k] = free
        rhs = torch.cat([-grad.double() * free, torch.zeros(n, 1, dtype=torch.float64)], -1)
        try:
            steps.append(torch.linalg.solve(system, rhs)[:, :k].to(w.dtype))
        except Exception:
            import sys
            print("DEBUG", system[69], w[69], free[69], logits[69].abs().max(), p[69].max(), hess[69], file=sys.stderr)
            raise
    return steps[0], steps[1], grad


def oracle_mix(members: MemberLogits, steps: int = 12) -> tuple[Tensor, Tensor]:
    """Per token, ``min_{w in Δ} CE_t(w)`` by projected Newton: each step tries the projected
    Newton points ``P(w + t d)`` for several ``t`` (``d`` over all coordinates, and over the
    face of the current support) and projected-gradient points
    ``P(w - η g / |g|)``, and moves each token to its best candidate if that lowers its CE
    (monotone). Starts from the best vertex (the oracle pick) and from the uniform mix, keeping
    the better, so the result is ``<=`` the oracle pick by construction. Returns ``(ce [n], w [n, k])``."""
    k, ces, ws = members.k, [], []
    vertex_ce = member_ce(members)
    for rows, logits, label in members.chunks():
        best_ce, pick = vertex_ce[rows].min(-1)
        best_w = torch.nn.functional.one_hot(pick, k).float()
        w = torch.full(label.shape, 1.0 / k)
        ce, _ = mix_ce(logits, label, w)
        start = ce < best_ce
        w, ce = torch.where(start[:, None], w, best_w), torch.where(start, ce, best_ce)
        for _ in range(steps):
            d, d_face, g = _newton_directions(logits, label, w)
            unit = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            candidates = [project_simplex(w + t * step) for step in (d, d_face) for t in (1.0, 0.5, 0.2, 0.05)]
            candidates += [project_simplex(w - eta * unit) for eta in (0.3, 0.03, 0.003)]
            for cand in candidates:
                c, _ = mix_ce(logits, label, cand)
                better = c < ce
                w, ce = torch.where(better[:, None], cand, w), torch.where(better, c, ce)
        ces.append(ce)
        ws.append(w)
    return torch.cat(ces), torch.cat(ws)


def global_mix(members: MemberLogits, exact: Callable[[Tensor], MemberLogits] | None = None,
               max_iter: int = 60) -> tuple[float, Tensor]:
    """``min_{w in Δ} mean_t CE_t(w)``: one mix for all tokens. A start by L-BFGS (strong Wolfe
    line search) on ``w = softmax(θ)`` over ``members`` (the candidate surrogate when it is one),
    from the uniform mix, keeping the better of its result and the best single member; with
    ``exact`` (full-vocabulary :class:`MemberLogits` of tokens ``0 .. len(members) - 1``), then
    refined on the exact objective by :func:`exact_global_mix`. Returns ``(ce, w [k])``.

    Why the refinement: the surrogate equals ``CE`` at the vertices but bounds it from above
    inside the simplex, so its minimiser leans towards a vertex."""
    k = members.k
    vertex = member_ce(members).mean(0)
    theta = torch.zeros(k, requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        w = torch.softmax(theta, 0)
        total = sum(mix_ce(logits, label, w)[0].sum() for _, logits, label in members.chunks(1024))
        loss = total / len(members)
        loss.backward()
        return loss

    optimizer.step(closure)
    w = torch.softmax(theta.detach(), 0)
    ce = mix_ce_mean(members, w)
    if float(vertex.min()) < ce:
        ce, w = float(vertex.min()), torch.nn.functional.one_hot(vertex.argmin(), k).float()
    if exact is None:
        return ce, w
    return exact_global_mix(exact, len(members), w)


def mean_ce_grad_hess(exact: Callable[[Tensor], MemberLogits], n: int, w: Tensor) -> tuple[float, Tensor, Tensor]:
    """``F(w) = mean_t CE_t(w)`` with its gradient ``mean_t (E_p[l_t] - l_{t,y})`` and Hessian
    ``mean_t Cov_p(l_t)`` (``p = softmax(sum_i w_i l_{t,i})``), in one full-vocabulary pass."""
    k = w.shape[0]
    total, grad, hess = 0.0, torch.zeros(k, dtype=torch.float64), torch.zeros(k, k, dtype=torch.float64)
    for start in range(0, n, CHUNK):
        part = exact(torch.arange(start, min(start + CHUNK, n)))
        mix = torch.einsum("k,nkv->nv", w, part.logits)
        lse = torch.logsumexp(mix, -1)
        p = torch.exp(mix - lse[:, None])
        mean = torch.einsum("nv,nkv->nk", p, part.logits)
        total += float((lse - part.label @ w).double().sum())
        grad += (mean - part.label).double().sum(0)
        second = torch.einsum("nkv,njv->kj", part.logits * p[:, None, :], part.logits).double()
        hess += second - mean.double().T @ mean.double()
    return total / n, grad / n, hess / n


def simplex_qp(grad: Tensor, hess: Tensor, w: Tensor) -> Tensor:
    """The minimiser over the simplex of the quadratic model ``g·(v - w) + ½ (v - w)ᵀ H (v - w)``,
    exactly: for every support ``S`` (``2^k - 1`` of them; ``k`` is small), the model's minimiser on
    the plane ``sum_S v = 1`` with ``v = 0`` off ``S`` (its KKT system), keeping the feasible
    (``v >= 0``) one of lowest model value. ``H`` is a covariance (PSD), ridged for the solve."""
    k = w.shape[0]
    hess = hess + 1e-9 * max(float(hess.diagonal().mean()), 1e-9) * torch.eye(k, dtype=hess.dtype)
    target = hess @ w - grad  # the model's gradient is H v - target
    best, best_value = w, 0.0
    for mask in range(1, 2 ** k):
        support = [i for i in range(k) if mask >> i & 1]
        m = len(support)
        system = torch.zeros(m + 1, m + 1, dtype=hess.dtype)
        system[:m, :m] = hess[support][:, support]
        system[:m, m] = system[m, :m] = 1.0
        rhs = torch.cat([target[support], torch.ones(1, dtype=hess.dtype)])
        try:
            solution = torch.linalg.solve(system, rhs)[:m]
        except RuntimeError:
            continue
        if (solution < -1e-12).any():
            continue
        v = torch.zeros(k, dtype=hess.dtype)
        v[support] = solution.clamp_min(0)
        v = v / v.sum()
        d = v - w
        value = float(grad @ d + 0.5 * d @ hess @ d)
        if value < best_value:
            best, best_value = v, value
    return best


def exact_global_mix(exact: Callable[[Tensor], MemberLogits], n: int, start: Tensor, steps: int = 30,
                     tol: float = 1e-10) -> tuple[float, Tensor]:
    """``min_{w in Δ} F(w)``, ``F(w) = mean_t CE_t(w)`` on the full vocabulary, by Newton steps on
    the simplex: at ``w``, :func:`simplex_qp` minimises the second-order model of ``F`` over the
    simplex (so faces are entered and left exactly), and the step is halved until ``F`` does not
    rise. ``F`` is convex, so this converges to its minimum; it stops when a step gains less than
    ``tol``. Returns ``(F(w), w)``."""
    w = start.double()
    ce, grad, hess = mean_ce_grad_hess(exact, n, w.float())
    for _ in range(steps):
        target = simplex_qp(grad, hess, w)
        step, moved = 1.0, False
        while step > 1e-4:
            trial = w + step * (target - w)
            trial_ce, trial_grad, trial_hess = mean_ce_grad_hess(exact, n, trial.float())
            if trial_ce <= ce:
                gain = ce - trial_ce
                w, ce, grad, hess, moved = trial, trial_ce, trial_grad, trial_hess, True
                break
            step /= 2
        if not moved or gain < tol:
            break
    return ce, w.float()


def mix_ce_mean(members: MemberLogits, weights: Tensor) -> float:
    """``mean_t CE_t(w_t)`` for per-token ``[n, k]`` (or one ``[k]``) weights."""
    total = 0.0
    for rows, logits, label in members.chunks():
        w = weights if weights.dim() == 1 else weights[rows]
        total += float(mix_ce(logits, label, w)[0].sum())
    return total / max(1, len(members))


@dataclass
class LinearRouter:
    """``G(x) = softmax(((x - mean) / std) W + b)``: the method's router form (``b`` plays the
    part of the constant prior) on standardised inputs."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return torch.softmax(((x - self.mean) / self.std) @ self.weight + self.bias, -1)


def fit_linear_router(x: Tensor, members: MemberLogits, val_x: Tensor, val_members: MemberLogits, lr: float = 1e-3,
                      max_epochs: int = 60, patience: int = 4, batch: int = 128, seed: int = 0,
                      init: Tensor | None = None) -> tuple[LinearRouter, list[float]]:
    """Fit ``W`` (zero start) and ``b`` (start ``log init``, a mix such as the best global one;
    none: zero, the uniform mix) with Adam on the mean
    full-vocabulary ``CE_t(G(x_t))`` over ``members``, in shuffled mini-batches of ``batch``
    tokens; after each epoch score ``val_members`` and keep the best state; stop after
    ``patience`` epochs without improvement. Returns the router and the validation CE per epoch
    (index 0: before training)."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    weight = torch.zeros(x.shape[1], members.k, requires_grad=True)
    start = torch.zeros(members.k) if init is None else init.clamp_min(1e-4).log()
    bias = start.clone().requires_grad_(True)
    router = LinearRouter(mean, std, weight, bias)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def score() -> float:
        with torch.no_grad():
            return mix_ce_mean(val_members, router(val_x))

    history = [score()]
    best = (history[0], weight.detach().clone(), bias.detach().clone())
    for _ in range(max_epochs):
        for rows in torch.randperm(len(members), generator=generator).split(batch):
            part = members.select(rows)
            ce, _ = mix_ce(part.logits, part.label, router(x[rows]))
            optimizer.zero_grad()
            ce.mean().backward()
            optimizer.step()
        history.append(score())
        if history[-1] < best[0]:
            best = (history[-1], weight.detach().clone(), bias.detach().clone())
        elif len(history) - 1 - history.index(best[0]) >= patience:
            break
    return LinearRouter(mean, std, best[1], best[2]), history
