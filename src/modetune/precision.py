"""Mixed precision: which dtype the head projections of the MoD loss use, and float32 regions.

The MoD router and the loss arithmetic (log-softmax, cross-entropy, KL, their gradients) run
in float32 whatever the weights' dtype and whether ``torch.autocast`` is active. Only the
vocabulary-sized projections through the shared head (``z W^T`` forward, ``dl W`` backward)
run in the compute dtype: the autocast dtype when autocast is on, else the head's own dtype.
"""

from __future__ import annotations

import contextlib

import torch


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` casts matmuls to on ``device_type``, or ``None`` when it is off."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError):  # a device type autocast does not know (e.g. meta)
        return None
    return None


def projection_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype of the head projections: the autocast dtype when autocast is on, else ``weight.dtype``."""
    return autocast_dtype(weight.device.type) or weight.dtype


def without_autocast(device_type: str):
    """A context in which autocast is off on ``device_type`` (so float32 stays float32)."""
    if autocast_dtype(device_type) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)
