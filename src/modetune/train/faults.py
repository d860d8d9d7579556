"""Fault injection for tests: a Trainer callback, added only when ``MODETUNE_FAULT_AT_STEP`` is set.

``kill:N`` sends the process SIGKILL when optimizer step N begins (tests resumption after a
crash); ``nan:N`` multiplies the loss of step N's forward passes by NaN (tests that a
non-finite loss stops training and keeps the last good checkpoint).
"""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback

from .config import FAULT_ENV


class FaultInjection(TrainerCallback):
    """Kill the process or poison the loss at one optimizer step (1-based, like ``global_step``)."""

    def __init__(self, kind: str, step: int) -> None:
        self.kind, self.step = kind, step
        self._hook = None

    @classmethod
    def from_env(cls) -> FaultInjection | None:
        """The callback ``MODETUNE_FAULT_AT_STEP`` asks for, or ``None`` when it is unset."""
        fault = os.environ.get(FAULT_ENV, "")
        return cls(fault.split(":")[0], int(fault.split(":")[1])) if ":" in fault else None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 != self.step:
            return
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "nan" and model is not None:
            self._hook = model.register_forward_hook(_poison_loss)

    def on_step_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _poison_loss(module, inputs, outputs):
    if module.training and getattr(outputs, "loss", None) is not None:
        outputs.loss = outputs.loss * float("nan")
    return outputs
