"""Stopping a run cleanly when the cluster takes its GPUs back.

SLURM sends SIGTERM before it kills a job (or SIGUSR1 with `--signal`), Ctrl-C sends SIGINT, and torchrun
forwards SIGTERM and SIGINT to its workers. `StopSignals` turns each of them into a flag that the training
loop reads at its next step boundary; the loop agrees on it across ranks (a signal to one worker stops
all of them at the same step), saves, and the process exits with EXIT_PREEMPTED.
"""
import signal
import threading
from time import monotonic

# EX_TEMPFAIL of sysexits.h ("try again later"): not 0 (done), 1 (failed run) or 2 (bad input), and below
# 128, so that it cannot be taken for a process killed by a signal (128 + signal number)
EXIT_PREEMPTED = 75

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignals:
    """Context manager: while inside, SIGTERM, SIGUSR1 and SIGINT set `received` (the first signal's name)
    instead of ending the process, a repeated one too (Ctrl-C under torchrun reaches a worker twice: from the
    terminal and forwarded by torchrun); the previous handlers come back on exit. Outside the main thread
    (where Python cannot install handlers) it changes nothing."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = self.received or signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False


class SaveTimer:
    """Whether `minutes` (None: never) have passed since the last checkpoint, on this process's clock."""

    def __init__(self, minutes):
        self.seconds = None if minutes is None else 60.0 * minutes
        self.restart()

    def restart(self):
        self.start = monotonic()

    def due(self):
        return self.seconds is not None and monotonic() - self.start >= self.seconds


def preempted_line(step, checkpoint):
    return f"preempted at step {step}; checkpoint {checkpoint}; resume with resume=auto"
