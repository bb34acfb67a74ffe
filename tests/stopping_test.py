"""The training loop's stop request: one process reads a flag its signal handler sets,
several processes ask Orbax's preemption sync point (fast: no training)."""

import os
import signal

import pytest

from comatch_jax.trainer import stopping


class Checkpoints:
    """Stands for an Orbax CheckpointManager: the preemption sync point is reached at
    `preempted_at`."""

    def __init__(self, preempted_at=None):
        self.preempted_at = preempted_at

    def reached_preemption(self, step):
        return step == self.preempted_at


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_one_stop_request_however_often_it_arrives(sig):
    mine = lambda signum, frame: None
    previous = signal.signal(sig, mine)
    try:
        with stopping.StopRequest(Checkpoints(), multiprocess=False) as stop:
            assert not stop.requested(1)
            os.kill(os.getpid(), sig)
            os.kill(os.getpid(), sig)  # `timeout` and Slurm signal the process group too
            assert stop.requested(2) and stop.requested(3)
            stopped = stop.stopped(3)
        # The caller's handler is back (a notebook keeps its own Ctrl-C handler).
        assert signal.getsignal(sig) is mine
    finally:
        signal.signal(sig, previous)
    assert str(stopped) == (
        f"Stopped by {sig.name} at step 3 after a checkpoint; rerun the same command to resume."
    )
    assert stopped.exit_status == 128 + sig


def test_several_processes_stop_at_the_preemption_sync_point():
    with stopping.StopRequest(Checkpoints(preempted_at=5), multiprocess=True) as stop:
        # SIGTERM is left to JAX's preemption notifier.
        assert signal.getsignal(signal.SIGTERM) is not stop._record
        assert [stop.requested(step) for step in (4, 5)] == [False, True]
        stopped = stop.stopped(5)
    assert "Stopped by a preemption notice" in str(stopped) and "at step 5" in str(stopped)
    assert stopped.exit_status == 128 + signal.SIGTERM  # the same on every process
