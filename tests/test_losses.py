"""The MoD objective (modetune.mod.losses): the fused, chunked loss against its naive reference.

Two levels:
- the pure functions on random member states, over a grid of shapes x dtypes x config cases,
  values AND gradients (member states, router input, router weight, member norms);
- the loss inside a ``MoDModel`` on tiny random models (LoRA included), where the labelled
  tokens are gathered from a padded batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modetune import MoDConfig, get_mod_model
from modetune.mod.ensemble import Router
from modetune.mod.losses import HeadSpec, fused_mod_loss, naive_mod_loss
from modetune.utils.errors import DataError
from tiny import batch, lora, perturb, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # hundreds of tiny cases: threads would only contend

# ---------------------------------------------------------------------------------------------
# The pure functions


SHAPES = {  # name: (n labelled tokens, hidden size d, vocabulary V, members k, chunk_size)
    "several-chunks": (11, 6, 13, 3, 4),
    "one-token": (1, 4, 5, 2, 1),
    "one-chunk-exactly": (16, 8, 29, 4, 16),
    "chunk-over-n": (7, 5, 11, 3, 100),
    "chunks-of-one": (5, 4, 9, 3, 1),
    "k=1": (9, 6, 7, 1, 2),
}

# MoDConfig fields, plus how the test builds the parts around it: `bias` / `softcap` of the
# head, `shared_norm` (every member uses one frozen norm: member_norms=False).
CASES = {
    "defaults": dict(),
    "lambda=0": dict(distill_lambda=0.0),
    "lambda=1-uniform": dict(distill_lambda=1.0, router_init="uniform"),
    "lambda=0.5-tau=2": dict(distill_lambda=0.5, temperature=2.0),
    "forward": dict(distill_direction="forward"),
    "reverse-live-teacher": dict(detach_teacher=False, train_final_norm=True),
    "forward-live-teacher": dict(distill_direction="forward", detach_teacher=False),
    "through-body": dict(distill_through_body=True),
    "forward-through-body-live-teacher": dict(distill_direction="forward", distill_through_body=True,
                                              detach_teacher=False),
    "entry-router": dict(router_input="entry"),
    "top_k=1": dict(top_k=1),
    "top_k=2-entry": dict(top_k=2, router_input="entry", router_init="uniform"),
    "no-bias": dict(bias=False),
    "softcap": dict(softcap=2.0),
    "softcap-lambda=0": dict(softcap=2.0, distill_lambda=0.0),
    "softcap-forward-live-teacher-body": dict(softcap=2.0, distill_direction="forward", detach_teacher=False,
                                              distill_through_body=True),
    "shared-norm": dict(shared_norm=True, member_norms=False),
    "shared-norm-trained": dict(shared_norm=True, member_norms=False, train_final_norm=True),
}

# (rtol on values, rtol of a gradient's largest error relative to its largest entry)
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-9)}


def _problem(shape, case, dtype=torch.float64, seed=0):
    """Random inputs of both loss functions: states, router input, labels, norms, router, head, config."""
    n, d, V, k, chunk = shape
    case = dict(case)
    bias, softcap, shared = case.pop("bias", True), case.pop("softcap", None), case.pop("shared_norm", False)
    if case.get("top_k") is not None:
        case["top_k"] = min(case["top_k"], k)
    config = MoDConfig(k=k, chunk_size=chunk, **case)
    g = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=g, dtype=torch.float64) * scale).to(dtype)

    hs = [randn(n, d).requires_grad_() for _ in range(k)]
    router_input = randn(n, d).requires_grad_() if config.router_input == "entry" else None
    labels = torch.randint(0, V, (n,), generator=g)
    head = HeadSpec(randn(V, d), randn(V) if bias else None, softcap)
    final = nn.LayerNorm(d, dtype=dtype)
    members = [final] * (k - 1) if shared else [nn.LayerNorm(d, dtype=dtype) for _ in range(k - 1)]
    with torch.no_grad():
        for norm in {id(m): m for m in [*members, final]}.values():
            norm.weight.copy_(1 + randn(d, scale=0.3))
            norm.bias.copy_(randn(d, scale=0.3))
    for norm in members:
        norm.requires_grad_(True)
    final.requires_grad_(config.train_final_norm)
    router = Router(d, k, config.router_init, config.router_init_final_weight, config.top_k)
    if dtype == torch.float64:
        router = router.double()
    with torch.no_grad():
        router.weight.copy_(randn(k, d, scale=0.5))
    return hs, router_input, labels, [*members, final], router, head, config


def _inputs(hs, router_input, norms, router):
    """Everything a gradient is compared for: states, router input, router weight, trainable norm parameters."""
    params = {id(p): p for m in [*norms, router] for p in m.parameters() if p.requires_grad}
    return [*hs, *([router_input] if router_input is not None else []), *params.values()]


def _value_and_grads(fn, problem):
    hs, router_input, labels, norms, router, head, config = problem
    out = fn(hs, router_input, labels, norms, router, head, config)
    inputs = _inputs(hs, router_input, norms, router)
    grads = torch.autograd.grad(out.loss, inputs, allow_unused=True)
    return out, [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _assert_grads_close(got, expected, rtol):
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        assert torch.isfinite(a).all(), i
        scale = b.abs().max().clamp_min(1e-12)
        assert ((a - b).abs().max() / scale) < rtol, (i, ((a - b).abs().max() / scale).item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_fused_equals_naive_values_and_grads(shape, case, dtype):
    problem = _problem(shape, case, dtype)
    config = problem[-1]
    fused, grads_f = _value_and_grads(fused_mod_loss, problem)
    naive, grads_n = _value_and_grads(naive_mod_loss, problem)
    rtol, grad_rtol = TOLERANCE[dtype]
    k = config.k
    torch.testing.assert_close(fused.loss, naive.loss, rtol=rtol, atol=0)
    torch.testing.assert_close(fused.task, naive.task, rtol=rtol, atol=0)
    # KL components are tiny differences of near-equal distributions: compared on the loss scale
    torch.testing.assert_close(fused.distill, naive.distill, rtol=rtol, atol=rtol * naive.loss.item())
    assert fused.distill.shape == ((k - 1,) if config.distill_lambda > 0 else (0,))
    torch.testing.assert_close(fused.weights, naive.weights, rtol=rtol, atol=rtol)
    assert fused.weights.shape == (shape[0], k)
    if config.distill_lambda > 0 or problem[5].softcap is not None:  # member logits are computed anyway
        assert fused.member_ce is not None
    if fused.member_ce is not None:
        torch.testing.assert_close(fused.member_ce, naive.member_ce, rtol=rtol, atol=0)
    _assert_grads_close(grads_f, grads_n, grad_rtol)
    if config.distill_lambda > 0 and k > 1:
        torch.testing.assert_close(naive.loss, naive.task + config.distill_lambda * naive.distill.sum(),
                                   rtol=rtol, atol=0)
    else:
        torch.testing.assert_close(fused.loss, fused.task, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_evaluation_path_values_equal_naive(case):
    """Without grad mode the fused loss computes values only, and always every member's CE."""
    problem = _problem(SHAPES["several-chunks"], case)
    hs, router_input, labels, norms, router, head, config = problem
    with torch.no_grad():
        fused = fused_mod_loss(hs, router_input, labels, norms, router, head, config)
        naive = naive_mod_loss(hs, router_input, labels, norms, router, head, config)
    assert fused.loss.grad_fn is None
    assert fused.member_ce is not None and fused.member_ce.shape == (config.k,)
    for a, b in [(fused.loss, naive.loss), (fused.task, naive.task), (fused.member_ce, naive.member_ce),
                 (fused.weights, naive.weights)]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.distill, naive.distill, rtol=1e-10, atol=1e-12)


# bfloat16: states, head and norms in bfloat16 (the router stays float32, as in a model).
# The reference is the naive loss in float64 on the SAME bfloat16-rounded inputs, so the
# difference is the fused path's bfloat16 arithmetic only (norms and head matmuls in
# bfloat16, softmax/KL in float32). Stated tolerance: 1e-2 relative on values (seen: <= 2e-3),
# 1e-1 of a gradient's largest entry (seen: <= 4.5e-2, on a norm bias, whose gradient is a
# sum over tokens of bfloat16-rounded terms that cancel). A wrong term is off by O(1).
BF16_RTOL, BF16_GRAD_RTOL = 1e-2, 1e-1


@pytest.mark.parametrize("case", [CASES[c] for c in ("defaults", "lambda=0", "forward-live-teacher", "through-body",
                                                     "entry-router", "softcap")],
                         ids=["defaults", "lambda=0", "forward-live-teacher", "through-body", "entry-router", "softcap"])
def test_fused_bfloat16_close_to_float64_reference(case):
    low = _problem(SHAPES["several-chunks"], case, torch.bfloat16)
    high = _problem(SHAPES["several-chunks"], case, torch.float64)
    hs, router_input, labels, norms, router, head, config = low
    with torch.no_grad():  # the float64 problem takes the bfloat16 problem's (rounded) values
        for a, b in zip(_inputs(*high[:2], high[3], high[4]), _inputs(hs, router_input, norms, router)):
            a.copy_(b.double())
        high[5].weight.copy_(head.weight.double())
        if head.bias is not None:
            high[5].bias.copy_(head.bias.double())
    fused, grads_f = _value_and_grads(fused_mod_loss, low)
    naive, grads_n = _value_and_grads(naive_mod_loss, high)
    assert fused.loss.dtype == torch.float32  # the loss is accumulated in float32
    torch.testing.assert_close(fused.loss.double(), naive.loss, rtol=BF16_RTOL, atol=0)
    torch.testing.assert_close(fused.task.double(), naive.task, rtol=BF16_RTOL, atol=0)
    torch.testing.assert_close(fused.distill.double(), naive.distill, rtol=BF16_RTOL, atol=BF16_RTOL * naive.loss.item())
    _assert_grads_close([g.double() for g in grads_f], grads_n, BF16_GRAD_RTOL)


# Finite differences check the TRUE gradient, so only cases where the objective has no
# stop-gradient: lambda = 0, or a live teacher with distillation through the body.
LIVE = dict(distill_through_body=True, detach_teacher=False)
GRADCHECK_CASES = {
    "lambda=0": CASES["lambda=0"],
    "softcap-lambda=0-top_k=2": dict(softcap=2.0, distill_lambda=0.0, top_k=2),
    "reverse-live": dict(**LIVE),
    "forward-live-tau=2": dict(distill_direction="forward", temperature=2.0, **LIVE),
    "softcap-forward-live": CASES["softcap-forward-live-teacher-body"],
    "entry-router-live-lambda=0.5": dict(router_input="entry", distill_lambda=0.5, **LIVE),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES.values(), ids=GRADCHECK_CASES.keys())
def test_fused_gradients_match_finite_differences(case):
    """The hand-written gradients against numerical ones (float64), independently of the naive loss."""
    hs, router_input, labels, norms, router, head, config = _problem((5, 4, 7, 3, 2), case)
    leaves = [*hs, *([router_input] if router_input is not None else [])]

    def loss(*tensors):
        states = list(tensors[: len(hs)])
        entry = tensors[len(hs)] if router_input is not None else None
        return fused_mod_loss(states, entry, labels, norms, router, head, config).loss

    assert torch.autograd.gradcheck(loss, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_chunk_size_does_not_change_the_result():
    results = []
    for chunk in (1, 3, 11, 64):
        problem = _problem((11, 6, 13, 3, chunk), CASES["forward-live-teacher"])
        results.append(_value_and_grads(fused_mod_loss, problem))
    (first, first_grads), *others = results
    for out, grads in others:
        torch.testing.assert_close(out.loss, first.loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(out.distill, first.distill, rtol=1e-12, atol=1e-14)
        _assert_grads_close(grads, first_grads, 1e-11)


@pytest.mark.parametrize("fn", [fused_mod_loss, naive_mod_loss], ids=["fused", "naive"])
def test_normaliser_divides_every_term(fn):
    """``normaliser`` (the Trainer's ``num_items_in_batch``) replaces the token count ``n``."""
    hs, router_input, labels, norms, router, head, config = _problem(SHAPES["several-chunks"], CASES["defaults"])
    n = labels.numel()
    by_count = fn(hs, router_input, labels, norms, router, head, config)
    by_default = fn(hs, router_input, labels, norms, router, head, config, normaliser=float(n))
    doubled = fn(hs, router_input, labels, norms, router, head, config, normaliser=2.0 * n)
    torch.testing.assert_close(by_default.loss, by_count.loss, rtol=1e-12, atol=0)
    for name in ("loss", "task", "distill", "member_ce"):
        torch.testing.assert_close(getattr(doubled, name), getattr(by_count, name) / 2, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_naive_loss_is_the_documented_formula(direction):
    """``L = CE(sum_i G_i l_i, y) + lambda sum_{i<k} KL``, written out here from the definitions."""
    problem = _problem(SHAPES["several-chunks"], dict(distill_direction=direction, distill_lambda=0.7,
                                                      temperature=1.5, softcap=3.0))
    hs, router_input, labels, norms, router, head, config = problem
    out = naive_mod_loss(hs, router_input, labels, norms, router, head, config)
    with torch.no_grad():
        zs = [norm(h) for norm, h in zip(norms, hs)]
        member = [3.0 * torch.tanh((z @ head.weight.T + head.bias) / 3.0) for z in zs]
        G = torch.softmax(zs[-1] @ router.weight.T + router.prior, -1)
        ensemble = sum(G[:, i : i + 1] * member[i] for i in range(config.k))
        n = labels.numel()
        task = -torch.log_softmax(ensemble, -1)[torch.arange(n), labels].sum() / n
        p = [torch.softmax(m / 1.5, -1) for m in member]
        kl = lambda a, b: (a * (a.log() - b.log())).sum() / n  # noqa: E731
        distill = torch.stack([kl(p[i], p[-1]) if direction == "reverse" else kl(p[-1], p[i]) for i in range(2)])
        ce = torch.stack([-torch.log_softmax(m, -1)[torch.arange(n), labels].sum() / n for m in member])
    torch.testing.assert_close(out.task, task, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.distill, distill, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.member_ce, ce, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.loss, task + 0.7 * distill.sum(), rtol=1e-6, atol=0)


def test_head_logits_soft_capping_and_float32():
    weight = torch.randn(5, 3, dtype=torch.bfloat16)
    z = torch.randn(4, 3, dtype=torch.bfloat16)
    plain = HeadSpec(weight).logits(z)
    assert plain.dtype == torch.float32
    torch.testing.assert_close(plain, F.linear(z, weight).float())
    capped = HeadSpec(weight, softcap=2.0).logits(z)
    torch.testing.assert_close(capped, 2.0 * torch.tanh(plain / 2.0))
    assert capped.abs().max() < 2.0
    assert HeadSpec(weight.double()).logits(z.double()).dtype == torch.float64


def test_fused_loss_refuses_a_trainable_head():
    hs, router_input, labels, norms, router, head, config = _problem(SHAPES["several-chunks"], CASES["defaults"])
    head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen"):
        fused_mod_loss(hs, router_input, labels, norms, router, head, config)


def test_naive_and_fused_functions_agree_directly():
    """The pure loss functions, without a model, on random states (float64)."""
    torch.manual_seed(0)
    n, d, V, k = 11, 6, 13, 3
    hs = [torch.randn(n, d, dtype=torch.float64, requires_grad=True) for _ in range(k)]
    labels = torch.randint(0, V, (n,))
    head = HeadSpec(torch.randn(V, d, dtype=torch.float64), torch.randn(V, dtype=torch.float64))
    norms = [nn.LayerNorm(d, dtype=torch.float64) for _ in range(k)]
    router = Router(d, k)
    router.weight.data.normal_()
    router = router.double()
    config = MoDConfig(k=k, chunk_size=4)
    out_f = fused_mod_loss(hs, None, labels, norms, router, head, config)
    gf = torch.autograd.grad(out_f.loss, hs + [router.weight])
    out_n = naive_mod_loss(hs, None, labels, norms, router, head, config)
    gn = torch.autograd.grad(out_n.loss, hs + [router.weight])
    torch.testing.assert_close(out_f.loss, out_n.loss, rtol=1e-10, atol=0)
    for a, b in zip(gf, gn):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The loss inside a MoDModel (tiny random models, LoRA body)


BODY = dict(distill_through_body=True, router_init="uniform")  # the gradient path the defaults switch off
LOSS_CASES = [
    dict(distill_direction="reverse", **BODY),
    dict(distill_direction="forward", **BODY),
    dict(distill_direction="reverse", detach_teacher=False, train_final_norm=True, **BODY),
    dict(distill_direction="forward", detach_teacher=False, **BODY),
    dict(),  # the defaults: router_init="final", distill_through_body=False
    dict(router_input="entry", top_k=2, **BODY),
    dict(distill_lambda=0.0),
    dict(temperature=2.0, distill_lambda=0.5, **BODY),
]


def _model_loss_and_grads(arch, config, inputs, **forward):
    model = get_mod_model(lora(tiny_model(arch)), config)
    perturb(model)
    model.train()
    ids, mask, labels = inputs
    out = model(ids, attention_mask=mask, labels=labels, **forward)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def _assert_model_results_close(a, ga, b, gb):
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(a.task_loss, b.task_loss, rtol=1e-5, atol=0)
    # KL components are tiny differences of near-equal distributions: compared on the loss scale
    torch.testing.assert_close(a.distill_losses, b.distill_losses, rtol=1e-5, atol=1e-7)
    if a.member_ce is not None:
        torch.testing.assert_close(a.member_ce, b.member_ce, rtol=1e-5, atol=0)
    assert ga.keys() == gb.keys()
    kinds = {"router": 0, "norms": 0, "lora": 0}
    for name in ga:
        assert torch.isfinite(ga[name]).all()
        scale = gb[name].abs().max().clamp_min(1e-12)
        assert ((ga[name] - gb[name]).abs().max() / scale) < 1e-5, name
        kinds["router"] += "router" in name
        kinds["norms"] += name.startswith("ensemble.norms.")
        kinds["lora"] += "lora_" in name
    assert all(kinds.values()), kinds
    lora_grads = [g for name, g in ga.items() if "lora_A" in name]
    assert any(g.abs().sum() > 0 for g in lora_grads)


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "defaults")
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_chunked_loss_equals_naive(case, arch):
    inputs = batch()
    (a, ga), (b, gb) = [_model_loss_and_grads(arch, MoDConfig(k=3, loss_impl=impl, chunk_size=5, **case), inputs)
                        for impl in ("chunked", "naive")]
    _assert_model_results_close(a, ga, b, gb)


MODEL_SHAPES = {  # name: (batch, sequence length, chunk_size)
    "one-row": (1, 8, 3),
    "wide-batch": (5, 6, 4),
    "long-one-chunk": (2, 24, 64),
    "chunks-of-one": (3, 7, 1),
}


@pytest.mark.parametrize("lam", [0.0, 1.0], ids=["lambda=0", "lambda=1"])
@pytest.mark.parametrize("shape", MODEL_SHAPES.values(), ids=MODEL_SHAPES.keys())
def test_chunked_loss_equals_naive_over_batch_shapes(shape, lam):
    size, length, chunk = shape
    inputs = batch(seed=size + length, batch=size, length=length)
    (a, ga), (b, gb) = [
        _model_loss_and_grads("llama", MoDConfig(k=3, distill_lambda=lam, loss_impl=impl, chunk_size=chunk), inputs)
        for impl in ("chunked", "naive")]
    _assert_model_results_close(a, ga, b, gb)
    assert a.router_weights.shape == ((inputs[2][:, 1:] != -100).sum(), 3)  # training: G at the labelled tokens


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_num_items_in_batch_is_the_normaliser(impl):
    """The Trainer's ``num_items_in_batch`` (labelled tokens of the whole accumulated batch) divides the loss."""
    inputs = batch()
    n = int((inputs[2][:, 1:] != -100).sum())
    config = MoDConfig(k=3, loss_impl=impl, chunk_size=5)
    own, grads = _model_loss_and_grads("llama", config, inputs)
    doubled, doubled_grads = _model_loss_and_grads("llama", config, inputs, num_items_in_batch=2 * n)
    torch.testing.assert_close(doubled.loss, own.loss / 2, rtol=1e-6, atol=0)
    for name in grads:
        torch.testing.assert_close(doubled_grads[name], grads[name] / 2, rtol=1e-5, atol=1e-8)


def test_loss_function_matches_hf_loss_for_single_member():
    """k = 1: the MoD loss is the model's own causal-LM cross-entropy."""
    ids, mask, labels = batch()
    base = tiny_model("llama")
    expected = base(ids, attention_mask=mask, labels=labels).loss
    model = get_mod_model(base, MoDConfig(k=1, member_norms=False))
    torch.testing.assert_close(model(ids, attention_mask=mask, labels=labels).loss, expected, rtol=1e-6, atol=0)


def test_distill_through_body_false_keeps_distill_out_of_body():
    """With lambda > 0, LoRA gradients must not depend on lambda when the body is cut off."""
    ids, mask, labels = batch()
    grads = []
    for lam in (0.0, 3.0):
        model = get_mod_model(lora(tiny_model("llama")), MoDConfig(k=3, distill_lambda=lam, distill_through_body=False))
        perturb(model)
        model.train()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        if "lora_" in name:
            torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(grads[0]["ensemble.norms.0.weight"], grads[1]["ensemble.norms.0.weight"])


def test_evaluation_reports_member_ce_even_without_distillation():
    """With lambda = 0 training uses the one-projection shortcut; evaluation still reports
    every member's own cross-entropy (the sweeps' diagnostic), equal to the naive reference."""
    ids, mask, labels = batch()
    outs = []
    for impl in ("chunked", "naive"):
        model = get_mod_model(tiny_model("llama"), MoDConfig(k=3, distill_lambda=0.0, loss_impl=impl, chunk_size=5))
        perturb(model)
        with torch.no_grad():
            outs.append(model(ids, attention_mask=mask, labels=labels))
    assert outs[0].member_ce is not None and outs[0].member_ce.shape == (3,)
    torch.testing.assert_close(outs[0].member_ce, outs[1].member_ce, rtol=1e-5, atol=0)
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=1e-5, atol=0)


def test_no_labelled_token_is_refused():
    ids, mask, labels = batch()
    model = get_mod_model(tiny_model("llama"), MoDConfig(k=3))
    with pytest.raises(ValueError, match="No token carries a label"):
        model(ids, attention_mask=mask, labels=torch.full_like(labels, -100))
    with pytest.raises(DataError):  # bad input (e.g. every answer cut off): one line on the command line
        model(ids, attention_mask=mask, labels=torch.full_like(labels, -100))
