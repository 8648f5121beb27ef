"""The sync transport's attempt runner: never queues a task behind a busy thread, reuses
idle ones, lets them go when idle, and starts afresh in a forked child."""

from __future__ import annotations

import os
import threading

import pytest

from embedbalance._threads import Runner


def test_every_task_starts_at_once_however_many_are_blocked() -> None:
    """64 tasks that all block until released are all running together: no pool size caps
    how many attempts run at once (a cap would deadlock this test)."""
    runner = Runner()
    started = threading.Barrier(64 + 1, timeout=10)
    release = threading.Event()

    def task(i: int) -> int:
        started.wait()
        release.wait(10)
        return i

    futures = [runner.submit(task, i) for i in range(64)]
    started.wait()  # raises BrokenBarrierError if any task could not start
    release.set()
    assert [f.result(timeout=10) for f in futures] == list(range(64))


def test_idle_threads_are_reused_then_retire() -> None:
    """A finished thread takes the next task instead of a new one starting; idle ones exit
    after the idle time, leaving no thread behind."""
    runner = Runner(idle=0.2)
    names: list[int] = []
    for _ in range(5):
        runner.submit(lambda: names.append(threading.get_ident())).result(timeout=5)
    assert len(set(names)) == 1
    deadline = threading.Event()
    for _ in range(50):
        if runner.idle == 0:
            break
        deadline.wait(0.05)
    assert runner.idle == 0


def test_exceptions_reach_the_future() -> None:
    """A task's exception is the future's, and the thread survives to run the next one."""
    runner = Runner()
    with pytest.raises(ZeroDivisionError):
        runner.submit(lambda: 1 / 0).result(timeout=5)
    assert runner.submit(lambda: 7).result(timeout=5) == 7


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_tasks() -> None:
    """After fork the parent's idle threads do not exist; the child's submit still runs."""
    runner = Runner()
    runner.submit(lambda: None).result(timeout=5)  # leaves an idle thread in the parent
    assert runner.idle == 1
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            ok = runner.submit(lambda: 42).result(timeout=5) == 42
        except BaseException:
            ok = False
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_shutdown_joins_idle_threads_and_later_submits_still_run() -> None:
    """After shutdown no runner thread is left (a closed transport leaves none behind),
    and a later submit starts afresh."""
    runner = Runner(name="runner-under-test")
    for f in [runner.submit(lambda: None) for _ in range(4)]:
        f.result(timeout=5)
    runner.shutdown()
    assert not [t for t in threading.enumerate() if t.name == "runner-under-test"]
    assert runner.submit(lambda: 5).result(timeout=5) == 5
    runner.shutdown()


def test_a_thread_busy_at_shutdown_exits_as_soon_as_its_task_ends() -> None:
    """Shutdown waits for a busy thread only as long as its task runs: a thread that ends
    its task during shutdown exits instead of waiting for more work. If this fails,
    closing a transport right after an attempt timed out (its thread still finishing)
    blocks for the whole join timeout."""
    runner = Runner(name="runner-busy")
    release = threading.Event()
    busy = runner.submit(release.wait, 10.0)
    closer = threading.Thread(target=runner.shutdown, kwargs={"timeout": 30.0})
    closer.start()
    release.set()
    closer.join(timeout=5.0)
    assert not closer.is_alive(), "shutdown waited for a thread that had finished its task"
    assert busy.result(timeout=1) is True
    assert not [t for t in threading.enumerate() if t.name == "runner-busy"]
    assert runner.submit(lambda: 7).result(timeout=5) == 7  # later submits still run
    runner.shutdown()
