"""The signals that stop a run, and the helper processes that leave them to the main process.

A cluster signals a whole job, not one process: at the time limit and on preemption SLURM sends SIGTERM to every
process of the job, and its ``--signal`` warning before the limit (submitit's ``SIGUSR2``, some sites' ``SIGUSR1``)
to every process of the job step; ``timeout`` and a terminal's Ctrl-C signal a whole process group. Only the main
process can stop cleanly (save ``last.pt`` at a step boundary, then exit as the launcher expects), so data-loader
workers and other helper processes ignore these signals and end when the main process ends them.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

# SIGTERM: time limit, preemption, `timeout`, `kill`; SIGINT: Ctrl-C; SIGUSR1 / SIGUSR2: SLURM's `--signal` warning
# before the time limit (submitit asks for SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def ignore_stop_signals(*_: object) -> None:
    """Ignore :data:`STOP_SIGNALS` in this process (a helper: a loader worker, a process-pool worker).

    Also unblocks them, for a process started inside :func:`held` (a signal that reached it meanwhile is dropped).
    Usable as ``ProcessPoolExecutor(initializer=ignore_stop_signals)``.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def held() -> Iterator[None]:
    """Hold :data:`STOP_SIGNALS` back from this thread for the block, e.g. while loader workers are started.

    A child forked inside starts with them blocked, so a signal to the whole group that arrives before the child
    has called :func:`ignore_stop_signals` cannot kill it; this process receives such a signal when the block ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
