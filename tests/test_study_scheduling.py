"""The study's scheduler: a job starts as soon as the jobs it needs are done, a failure blocks
exactly what depends on it (transitively), and experts that read the same audio are spread over
the workers' queue."""

from __future__ import annotations

from speechmerge.study.executors import LocalExecutor
from speechmerge.study.jobs import Job
from speechmerge.study.plan import interleaved_by_audio
from speechmerge.study.scheduler import JobScheduler


def job(key: str, depends: tuple[str, ...] = (), fail: bool = False) -> Job:
    return Job(key, "evaluate", f"job {key}", "fake", {"name": key, "fail": fail}, depends=depends)


class MemoryRecorder:
    """The scheduler's recorder, in a dict: the status of every job and the order of events."""

    def __init__(self, status: dict[str, str] | None = None):
        self.state = dict(status or {})
        self.events: list[tuple[str, str]] = []

    def status(self, keys: list[str]) -> dict[str, str]:
        return {k: self.state[k] for k in keys if k in self.state}

    def started(self, job: Job) -> None:
        self.state[job.key] = "running"
        self.events.append(("start", job.key))

    def finished(self, job: Job, outcome: dict) -> None:
        self.state[job.key] = "done" if outcome["ok"] else "failed"
        self.events.append(("done" if outcome["ok"] else "failed", job.key))


class FakeExecutor:
    """Runs calls in list order, in this process; a spec with `fail` comes back failed."""

    def __init__(self):
        self.ran: list[str] = []

    def submit_all(self, calls, more):
        queue = list(calls)
        while queue:
            key, _, spec = queue.pop(0)
            self.ran.append(key)
            outcome = {"ok": not spec["fail"], "result": {}, "error": f"{key} broke"}
            yield key, outcome
            queue += more(key, outcome)


def run(jobs: list[Job], status: dict[str, str] | None = None, only_new: bool = False):
    executor, recorder = FakeExecutor(), MemoryRecorder(status)
    scheduler = JobScheduler(executor.submit_all, recorder, only_new=only_new)
    scheduler.run("test", jobs)
    return scheduler, recorder, executor


def test_a_job_runs_as_soon_as_its_inputs_are_done_and_a_failure_blocks_only_its_dependents():
    # e1 -> s1; e2 (fails) -> s2 -> t2; v needs e1 and e2; b needs nothing
    jobs = [
        job("e1"),
        job("e2", fail=True),
        job("b"),
        job("s1", depends=("e1",)),
        job("s2", depends=("e2",)),
        job("v", depends=("e1", "e2")),
        job("t2", depends=("s2",)),
    ]
    scheduler, recorder, executor = run(jobs)
    # the queue is the listed order; s1 waits only for e1, so it is queued as soon as e1 is done
    assert executor.ran == ["e1", "e2", "b", "s1"]
    assert recorder.events[:4] == [("start", "e1"), ("start", "e2"), ("start", "b"), ("done", "e1")]
    assert recorder.events[4] == ("start", "s1")  # started the moment e1 came back
    assert scheduler.failed == {"job e2": "e2 broke"}
    assert sorted(scheduler.blocked) == ["job s2", "job t2", "job v"]
    assert {k for k, v in recorder.state.items() if v == "done"} == {"e1", "b", "s1"}
    assert recorder.state["e2"] == "failed" and not {"s2", "t2", "v"} & set(recorder.state)


def test_done_jobs_are_skipped_and_their_dependents_start_at_once():
    later = [job("e1"), job("s1", depends=("e1",))]
    scheduler, recorder, executor = run(later, status={"e1": "done"})
    assert executor.ran == ["s1"] and not scheduler.failed and not scheduler.blocked


def test_a_job_needing_a_job_outside_the_batch_that_is_not_done_is_blocked():
    jobs = [job("s1", depends=("e1",)), job("t1", depends=("s1",)), job("b")]
    scheduler, _, executor = run(jobs, status={"e1": "failed"})
    assert executor.ran == ["b"]
    assert sorted(scheduler.blocked) == ["job s1", "job t1"]


def test_failed_jobs_run_again_unless_only_new_jobs_are_asked_for():
    jobs = [job("e1"), job("s1", depends=("e1",))]
    assert run(jobs, status={"e1": "failed"})[2].ran == ["e1", "s1"]
    scheduler, _, executor = run(jobs, status={"e1": "failed"}, only_new=True)
    assert executor.ran == [] and scheduler.blocked == ["job s1"]


def test_the_local_executor_runs_a_waiting_job_after_its_input(monkeypatch):
    """The real executor and task entry point: run_task's outcome drives the same release."""
    from speechmerge.study import tasks

    ran = []

    def fake(spec):
        ran.append(spec["name"])
        if spec["fail"]:
            raise RuntimeError(f"{spec['name']} broke")
        return {"rows": []}

    monkeypatch.setitem(tasks.TASKS, "fake", fake)
    recorder = MemoryRecorder()
    scheduler = JobScheduler(LocalExecutor().submit_all, recorder)
    scheduler.run("test", [job("e1", fail=True), job("s1", depends=("e1",)), job("b")])
    assert ran == ["e1", "b"] and scheduler.blocked == ["job s1"]
    assert scheduler.failed == {"job e1": "RuntimeError: e1 broke"}


def test_experts_sharing_audio_are_not_next_to_each_other_in_the_queue():
    def expert(language, task):
        return Job(
            f"{language}-{task}",
            "expert",
            f"expert {language}-{task}",
            "train_expert",
            {"selection": {"languages": [language], "tasks": [task], "domains": None}},
        )

    jobs = [expert(lang, task) for lang in ("es", "de", "fr") for task in ("transcribe", "translate")]
    order = [j.key for j in interleaved_by_audio(jobs)]
    assert order == ["es-transcribe", "de-transcribe", "fr-transcribe", "es-translate", "de-translate", "fr-translate"]


def test_a_pool_worker_ends_when_the_driver_is_killed(tmp_path):
    """Kill the driver of a pool with SIGKILL: its worker, busy with a long job, must not live on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    driver = r"""
import sys, time
from speechmerge.study.executors import PoolExecutor
pool = PoolExecutor(1)
future = pool.pool.submit(time.sleep, 600)
while not pool.pool._processes:
    time.sleep(0.05)
print(*pool.pool._processes, flush=True)
time.sleep(600)
"""
    process = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True)
    worker = int(process.stdout.readline().split()[0])
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the pool worker outlived its driver")


def test_the_parallel_queue_submits_released_jobs_and_cancels_what_is_left_when_stopped():
    """run_queue, the one queue of the pool and Ray executors, on handles that finish in submission order."""
    from speechmerge.study.executors import run_queue

    submitted, cancelled = [], []

    def submit(task, spec):
        submitted.append(spec["name"])
        return len(submitted) - 1  # the handle

    def more(key, outcome):
        return [("s1", "fake", {"name": "s1"}), ("s2", "fake", {"name": "s2"})] if key == "e1" else []

    queue = run_queue(
        [("e1", "fake", {"name": "e1"}), ("b", "fake", {"name": "b"})],
        more,
        submit=submit,
        wait_one=lambda handles: [min(handles)],
        result=lambda handle: {"ok": True, "handle": handle},
        cancel=cancelled.append,
    )
    assert next(queue) == ("e1", {"ok": True, "handle": 0})
    assert next(queue) == ("b", {"ok": True, "handle": 1})
    assert submitted == ["e1", "b", "s1", "s2"]  # e1's dependents were submitted when it came back
    queue.close()  # the caller stops: the jobs still pending are cancelled
    assert sorted(cancelled) == [2, 3]


def test_a_lost_worker_fails_its_job_only():
    import itertools

    from speechmerge.study.executors import run_queue

    def result(handle):
        if handle == 0:
            raise RuntimeError("worker died")
        return {"ok": True}

    outcomes = dict(
        run_queue(
            [("a", "fake", {}), ("b", "fake", {})],
            lambda key, outcome: [],
            submit=lambda task, spec, handles=itertools.count(): next(handles),
            wait_one=lambda handles: [min(handles)],
            result=result,
            cancel=lambda handle: None,
        )
    )
    assert outcomes["b"] == {"ok": True}
    assert not outcomes["a"]["ok"] and outcomes["a"]["error"] == "worker lost: RuntimeError: worker died"
