"""The row-blocked element-wise part of the fused loss (modetune.mod.logit_grads): block sizes change
no result, against the naive reference and against each other; the softmax helper; the block-size rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modetune import MoDConfig
from modetune.mod.logit_grads import CPU_ROW_BLOCK, row_block_size, softmax_into
from modetune.mod.losses import fused_mod_loss, naive_mod_loss
from modetune.utils.errors import ConfigError
from test_losses import CASES, _assert_grads_close, _problem, _value_and_grads

pytestmark = pytest.mark.usefixtures("one_thread")

# 23 tokens in chunks of 11 (the last chunk has 1 token); blocks of 3 leave a 2-row block in each full chunk
SHAPE = (23, 6, 13, 3, 11)
BLOCK_CASES = ["defaults", "lambda=0", "lambda=0.5-tau=2", "forward", "reverse-live-teacher",
               "forward-live-teacher", "softcap", "softcap-forward-live-teacher-body", "shared-norm"]


def _with_block(problem, block):
    *rest, config = problem
    return (*rest, MoDConfig(**{**config.to_dict(), "row_block": block}))


@pytest.mark.parametrize("block", [1, 3, 0, 11], ids=["block=1", "block=3", "auto", "block=chunk"])
@pytest.mark.parametrize("case", BLOCK_CASES)
def test_row_blocks_equal_naive(case, block):
    problem = _with_block(_problem(SHAPE, CASES[case]), block)
    fused, grads_f = _value_and_grads(fused_mod_loss, problem)
    naive, grads_n = _value_and_grads(naive_mod_loss, problem)
    torch.testing.assert_close(fused.loss, naive.loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(fused.task, naive.task, rtol=1e-10, atol=0)
    torch.testing.assert_close(fused.distill, naive.distill, rtol=1e-10, atol=1e-10 * naive.loss.item())
    if fused.member_ce is not None:  # (lambda = 0 without soft-capping trains on one projection: no member CE)
        torch.testing.assert_close(fused.member_ce, naive.member_ce, rtol=1e-10, atol=0)
    _assert_grads_close(grads_f, grads_n, 1e-9)


def test_block_size_changes_no_result():
    """Rows are independent: every block size gives the same loss and gradients (float64, to rounding)."""
    results = [_value_and_grads(fused_mod_loss, _with_block(_problem(SHAPE, CASES["forward-live-teacher"]), b))
               for b in (11, 1, 2, 5)]
    (first, first_grads), *others = results
    for out, grads in others:
        torch.testing.assert_close(out.loss, first.loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(out.distill, first.distill, rtol=1e-12, atol=1e-14)
        _assert_grads_close(grads, first_grads, 1e-11)


@pytest.mark.parametrize("tau", [1.0, 0.5, 3.0])
def test_softmax_into_is_softmax_and_logsumexp(tau):
    x = torch.randn(4, 37, dtype=torch.float64) * 5
    out = torch.empty_like(x)
    lse = softmax_into(x, tau, out)
    torch.testing.assert_close(out, F.softmax(x / tau, -1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(lse, torch.logsumexp(x / tau, -1, keepdim=True), rtol=1e-12, atol=0)
    raw = torch.empty_like(x)
    assert torch.equal(softmax_into(x, tau, raw, normalise=False), lse)
    torch.testing.assert_close(raw / raw.sum(-1, keepdim=True), out, rtol=1e-12, atol=1e-15)


def test_row_block_rule_and_validation():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert row_block_size(MoDConfig(), 256, cpu) == CPU_ROW_BLOCK
    assert row_block_size(MoDConfig(), 3, cpu) == 3
    assert row_block_size(MoDConfig(), 256, gpu) == 256  # no cache to fit on a GPU: the whole chunk
    assert row_block_size(MoDConfig(row_block=32), 256, gpu) == 32
    assert row_block_size(MoDConfig(row_block=32), 5, cpu) == 5
    with pytest.raises(ConfigError, match="row_block"):
        MoDConfig(row_block=-1)


def test_blocks_run_on_one_thread_and_restore_the_count(monkeypatch):
    """The row blocks run single-threaded (small ops; a busy machine would stall them), then the
    thread count is back as it was."""
    import modetune.mod.logit_grads as logit_grads

    seen = []
    real = logit_grads.softmax_into
    monkeypatch.setattr(logit_grads, "softmax_into", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = fused_mod_loss(*_with_block(_problem((22, 6, 13, 3, 11), CASES["defaults"]), 3))  # 2 chunks of 4 blocks
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    assert torch.isfinite(out.loss)
