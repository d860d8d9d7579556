"""Fault injection for the tests: a callback that ``modetune.train.train(config, callbacks=[...])``
installs (the library reads no environment variable and ships none of this). ``fault_cli.py``
runs the command line with the fault ``MODETUNE_TEST_FAULT`` names, for the tests that kill a
process (subprocesses, torchrun launches).

- ``kill:N``: SIGKILL when optimizer step N begins (a crash between steps);
- ``kill-save:N``: SIGKILL inside checkpoint N's save, once its weights are written and before
  the checkpoint is renamed into place;
- ``kill-adapter:0``: SIGKILL inside the final adapter write (weights written, tokenizer not);
- ``kill-validation:0``: SIGKILL when the final validation starts;
- ``nan:N``: multiplies the loss of step N's forward passes by NaN (a non-finite loss stops
  training and keeps the last good checkpoint).

``modetune eval``'s kills (:func:`install_eval_fault`, ``eval-KIND:N``) patch ``modetune.eval.runner``.
"""

from __future__ import annotations

import json
import os
import signal

from transformers import TrainerCallback

KINDS = ("kill", "kill-save", "kill-adapter", "kill-validation", "nan")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FaultInjection(TrainerCallback):
    """Kill the process or poison the loss at one optimizer step (1-based, like ``global_step``).
    ``install(trainer)`` (called by ``train()`` before training) wraps the trainer's own methods for
    the kills inside a save, the adapter write or the validation."""

    def __init__(self, spec: str) -> None:
        kind, _, step = spec.partition(":")
        if kind not in KINDS or not step.isdigit():
            raise ValueError(f"A fault must be KIND:N with KIND one of {', '.join(KINDS)}, got {spec!r}")
        self.kind, self.step = kind, int(step)
        self._hook = None

    def install(self, trainer) -> None:
        install_fault(trainer, self)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 != self.step:
            return
        if self.kind == "kill":
            _die()
        if self.kind == "nan" and model is not None:
            self._hook = model.register_forward_hook(_poison_loss)

    def on_step_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def install_fault(trainer, fault: FaultInjection) -> None:
    """For the kills inside a save or the validation, a wrapper around the trainer's own method on
    this instance (the callback itself is added by ``train()``)."""
    kind = fault.kind
    save, tokenizer, evaluate = trainer.save_model, trainer.tokenizer_to_save, trainer.evaluate

    def save_then_die(output_dir=None, *args, **kwargs):
        save(output_dir, *args, **kwargs)
        if os.sep + ".staging" + os.sep in str(output_dir) and trainer.state.global_step == fault.step:
            _die()

    def evaluate_or_die(*args, **kwargs):
        if trainer.state.global_step == trainer.state.max_steps:
            _die()
        return evaluate(*args, **kwargs)

    if kind == "kill-save":
        trainer.save_model = save_then_die
    if kind == "kill-adapter" and tokenizer is not None:
        original = tokenizer.save_pretrained
        final = lambda directory: os.path.basename(os.path.normpath(str(directory))).startswith(".adapter")
        tokenizer.save_pretrained = lambda directory, *a, **k: (_die() if final(directory)
                                                                else original(directory, *a, **k))
    if kind == "kill-validation":
        trainer.evaluate = evaluate_or_die


def _poison_loss(module, inputs, outputs):
    if module.training and getattr(outputs, "loss", None) is not None:
        outputs.loss = outputs.loss * float("nan")
    return outputs


EVAL_KINDS = ("eval-kill-append", "eval-kill-mid-append", "eval-kill-sort", "eval-kill-summary")


def install_eval_fault(spec: str) -> None:
    """One SIGKILL of an evaluation, at the N-th event of this process (from 1):

    - ``eval-kill-append:N``: once the N-th batch of rows is appended to a results file;
    - ``eval-kill-mid-append:N``: inside the N-th append, its last row cut off mid-line;
    - ``eval-kill-sort:N``: inside the N-th rewrite of a results file in item order (its staging
      file half written, not renamed);
    - ``eval-kill-summary:0``: when the summary is about to be written (every results file complete).
    """
    from modetune.eval import runner
    from modetune.utils.outputs import stage_path

    kind, _, number = spec.partition(":")
    if kind not in EVAL_KINDS or not number.isdigit():
        raise ValueError(f"An eval fault must be KIND:N with KIND one of {', '.join(EVAL_KINDS)}, got {spec!r}")
    n, seen = int(number), {"append": 0, "sort": 0}
    append, write_sorted = runner._append_rows, runner._write_sorted

    def append_or_die(path, rows):
        seen["append"] += 1
        if kind == "eval-kill-mid-append" and seen["append"] == n:
            append(path, rows[:-1])
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(rows[-1])[:30])
            _die()
        append(path, rows)
        if kind == "eval-kill-append" and seen["append"] == n:
            _die()

    def write_sorted_or_die(path, rows):
        seen["sort"] += 1
        if kind == "eval-kill-sort" and seen["sort"] == n:
            stage_path(path, folder=False).write_text('{"index": 0, "id"')
            _die()
        write_sorted(path, rows)

    runner._append_rows, runner._write_sorted = append_or_die, write_sorted_or_die
    if kind == "eval-kill-summary":
        runner.write_summary = lambda *args, **kwargs: _die()
