"""Cluster preemption and Ctrl-C: finish the step, save, and stop with the signal's exit code."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def stop_signals():
    """Record SIGTERM/SIGINT (cluster preemption, Ctrl-C) instead of dying mid-step.

    Yields a list that receives the signal number; the loop checks it after each step, saves a
    checkpoint and stops. A second signal while saving falls back to the default behaviour.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, _frame):
        received.append(signum)
        signal.signal(signum, previous[signum])

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT arrived; a checkpoint of the last completed step was saved first."""

    def __init__(self, signum: int, checkpoint):
        super().__init__(f"stopped by signal {signum}; checkpoint {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint
