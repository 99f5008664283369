"""Stopping a training run on request. SIGINT (Ctrl-C) and SIGTERM (what a scheduler sends before it
preempts a job) ask the run to stop at the end of the current step, with a checkpoint; a second
SIGINT stops it at once. DataLoader workers ignore both: the main process ends them (and their
watchdog ends them should it die), so a signal sent to the whole process group cannot kill a worker
under a step that is finishing."""

from __future__ import annotations

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """While entered (in the main thread), `received` is the first stop signal that arrived, or None."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # Python sets handlers from the main thread only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        print(
            f"\n{self.received.name}: stopping at the end of this step, with a checkpoint (Ctrl-C again stops at once)",
            file=sys.stderr,
            flush=True,
        )


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker_init_fn."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
