"""The web front end's job runner: one job at a time, progress, cancel within 2 s, callbacks on the
event loop thread, errors delivered, and the loop keeps ticking while a job runs."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from lkseg.errors import CancelledError, InputError
from lkseg.web.jobs import BusyError, JobRunner


def _slow(n_steps: int = 40, step_s: float = 0.05):
    """A job that reports progress and polls its token every ``step_s``."""

    def fn(progress, cancel):
        for i in range(n_steps):
            cancel.raise_if_cancelled()
            time.sleep(step_s)
            progress((i + 1) / n_steps, f"step {i + 1} of {n_steps}")
        return "finished"

    return fn


def test_result_delivered_without_loop_and_progress_reaches_one():
    runner = JobRunner()
    got = []
    job = runner.submit("quick", _slow(5, 0.01), on_done=got.append, on_error=got.append)
    assert job.wait(5)
    assert got == ["finished"]
    assert job.result == "finished" and job.error is None
    assert job.progress[0] == 1.0
    assert not runner.busy


def test_one_job_at_a_time_and_free_again_afterwards():
    runner = JobRunner()
    release = threading.Event()
    job = runner.submit("Automatic segmentation", lambda progress, cancel: release.wait(5))
    with pytest.raises(BusyError, match="Automatic segmentation") as info:
        runner.submit("Propagation", lambda progress, cancel: None)
    assert isinstance(info.value, InputError)  # shown on the page like any bad input
    assert "Propagation" in str(info.value)
    release.set()
    assert job.wait(5)
    second = runner.submit("Propagation", lambda progress, cancel: 7)
    assert second.wait(5) and second.result == 7


def test_progress_is_observable_while_running():
    runner = JobRunner()
    at_half = threading.Event()
    go_on = threading.Event()

    def fn(progress, cancel):
        progress(0.5, "half way")
        at_half.set()
        go_on.wait(5)
        return 1

    job = runner.submit("p", fn)
    assert at_half.wait(5)
    assert job.progress == (0.5, "half way")
    assert not job.done
    go_on.set()
    assert job.wait(5)
    assert job.progress[0] == 1.0


def test_cancel_ends_the_job_within_two_seconds_with_cancelled_error():
    runner = JobRunner()
    errors = []
    job = runner.submit("long", _slow(1000, 0.05), on_done=errors.append, on_error=errors.append)
    time.sleep(0.2)
    t0 = time.monotonic()
    assert runner.cancel()
    assert job.wait(2.0), "the job did not end within 2 s of cancel"
    assert time.monotonic() - t0 < 2.0
    assert len(errors) == 1 and isinstance(errors[0], CancelledError)
    assert job.cancelled and job.result is None
    assert not runner.busy
    assert not runner.cancel()  # nothing left to cancel


def test_errors_are_delivered_not_swallowed():
    runner = JobRunner()
    got = []

    def fn(progress, cancel):
        raise InputError("the CT has 2 dimensions, 3 needed")

    job = runner.submit("bad", fn, on_done=lambda r: got.append(("done", r)), on_error=lambda e: got.append(e))
    assert job.wait(5)
    assert len(got) == 1 and isinstance(got[0], InputError) and "2 dimensions" in str(got[0])
    assert job.error is got[0]
    # an unexpected error too (a bug), and the runner is usable afterwards
    job = runner.submit("bug", lambda p, c: 1 / 0, on_error=got.append)
    assert job.wait(5)
    assert isinstance(got[-1], ZeroDivisionError)
    assert runner.submit("ok", lambda p, c: 3).wait(5)


def test_callbacks_run_on_the_loop_thread_and_the_loop_keeps_ticking():
    """The job crunches numbers on its thread; the loop thread records the largest gap between
    its 20 ms ticks. The callbacks (progress, done) must arrive on the loop thread."""

    async def scenario():
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        runner = JobRunner()
        finished = asyncio.Event()
        seen = {"progress_threads": set(), "done_thread": None, "result": None}

        def work(progress, cancel):
            rng = np.random.default_rng(0)
            acc = 0.0
            t_end = time.monotonic() + 1.0
            step = 0
            while time.monotonic() < t_end:
                cancel.raise_if_cancelled()
                a = rng.random((200, 200))
                acc += float((a @ a).sum())
                step += 1
                progress(min(step / 50, 0.99), "crunching")
            return acc

        def on_done(result):
            seen["done_thread"] = threading.get_ident()
            seen["result"] = result
            finished.set()

        t0 = time.monotonic()
        job = runner.submit(
            "crunch",
            work,
            on_done=on_done,
            on_error=lambda e: finished.set(),
            loop=loop,
            on_progress=lambda f, m: seen["progress_threads"].add(threading.get_ident()),
        )
        submit_s = time.monotonic() - t0
        max_gap, last = 0.0, time.monotonic()
        while not finished.is_set():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            max_gap, last = max(max_gap, now - last), now
        return job, loop_thread, seen, submit_s, max_gap

    job, loop_thread, seen, submit_s, max_gap = asyncio.run(scenario())
    assert job.error is None and seen["result"] == job.result
    assert seen["done_thread"] == loop_thread
    assert seen["progress_threads"] == {loop_thread}
    assert submit_s < 0.1, f"submit blocked the loop for {submit_s:.3f} s"
    assert max_gap < 0.5, f"the event loop stalled for {max_gap:.3f} s while the job ran"


def test_error_callback_on_loop_thread():
    async def scenario():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def on_error(exc):
            fut.set_result((threading.get_ident(), exc))

        JobRunner().submit(
            "bad", lambda p, c: (_ for _ in ()).throw(InputError("no CT loaded")), on_error=on_error, loop=loop
        )
        thread, exc = await asyncio.wait_for(fut, 5)
        return thread == threading.get_ident(), exc

    same_thread, exc = asyncio.run(scenario())
    assert same_thread and isinstance(exc, InputError)


def test_closed_loop_does_not_break_the_worker():
    loop = asyncio.new_event_loop()
    loop.close()
    runner = JobRunner()
    job = runner.submit("after shutdown", lambda p, c: 1, on_done=lambda r: None, loop=loop)
    assert job.wait(5) and job.result == 1
    assert not runner.busy


def test_awaitable_run_returns_the_result_raises_errors_and_refuses_a_second_job():
    async def scenario():
        runner = JobRunner()
        pushed = []
        result = await runner.run("quick", _slow(5, 0.01), on_progress=lambda f, m: pushed.append(f))
        with pytest.raises(InputError, match="no CT"):
            await runner.run("bad", lambda p, c: (_ for _ in ()).throw(InputError("no CT loaded")))
        long_job = asyncio.ensure_future(runner.run("long", _slow(1000, 0.05)))
        await asyncio.sleep(0.1)
        with pytest.raises(BusyError, match="'long' is still running"):
            await runner.run("second", lambda p, c: 1)
        t0 = time.monotonic()
        assert runner.cancel()
        with pytest.raises(CancelledError):
            await long_job
        return result, pushed, time.monotonic() - t0

    result, pushed, cancel_s = asyncio.run(scenario())
    assert result == "finished" and pushed and pushed[-1] == 1.0
    assert cancel_s < 2.0
