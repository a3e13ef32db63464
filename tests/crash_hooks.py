"""A training hook that kills a run the way a killed process would: after the previous epoch's checkpoint."""

from __future__ import annotations


class CrashAt:
    """Raises at the start of epoch ``epoch``: a process killed after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_start(self, model, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated kill at epoch {epoch}")
