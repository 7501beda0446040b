"""The study's scheduler: a job starts as soon as the jobs it needs are done, a failure blocks
exactly what depends on it (transitively), and experts that read the same audio are spread over
the workers' queue."""

from __future__ import annotations

import pytest

from speechmerge.study import tasks
from speechmerge.study.executors import LocalExecutor
from speechmerge.study.jobs import Job
from speechmerge.study.runner import StageRunner, interleaved_by_audio
from speechmerge.study.store import Store


def job(key: str, task: str = "fake", depends: tuple[str, ...] = (), **spec) -> Job:
    return Job(key, "evaluate", f"job {key}", task, spec, depends=depends)


@pytest.fixture()
def fake_tasks(monkeypatch):
    ran = []

    def fake(spec):
        ran.append(spec["name"])
        if spec.get("fail"):
            raise RuntimeError(f"{spec['name']} broke")
        return {"rows": []}

    monkeypatch.setitem(tasks.TASKS, "fake", fake)
    return ran


def run(tmp_path, jobs: list[Job]) -> tuple[StageRunner, Store]:
    store = Store(tmp_path / "study.sqlite")
    store.add_jobs([j.record() for j in jobs])
    store.set_plan([j.key for j in jobs])
    runner = StageRunner(store, LocalExecutor(), only_new=False, progress=False)
    runner.run("test", jobs)
    return runner, store


def test_a_job_runs_as_soon_as_its_inputs_are_done_and_a_failure_blocks_only_its_dependents(tmp_path, fake_tasks):
    # e1 -> s1; e2 (fails) -> s2 -> t2; v needs e1 and e2; b needs nothing
    jobs = [
        job("e1", name="e1"),
        job("e2", name="e2", fail=True),
        job("b", name="b"),
        job("s1", depends=("e1",), name="s1"),
        job("s2", depends=("e2",), name="s2"),
        job("v", depends=("e1", "e2"), name="v"),
        job("t2", depends=("s2",), name="t2"),
    ]
    runner, store = run(tmp_path, jobs)
    # the queue is the listed order; s1 waits only for e1, so it is queued as soon as e1 is done
    assert fake_tasks == ["e1", "e2", "b", "s1"]
    assert set(runner.failed) == {"job e2"}
    assert sorted(runner.blocked) == ["job s2", "job t2", "job v"]
    status = store.status([j.key for j in jobs])
    assert {k for k, v in status.items() if v == "done"} == {"e1", "b", "s1"}
    assert status["e2"] == "failed" and all(status[k] == "pending" for k in ("s2", "t2", "v"))


def test_jobs_waiting_on_a_finished_job_of_an_earlier_run_start_at_once(tmp_path, fake_tasks):
    first = [job("e1", name="e1")]
    runner, store = run(tmp_path, first)
    fake_tasks.clear()
    later = [*first, job("s1", depends=("e1",), name="s1")]
    store.add_jobs([j.record() for j in later])
    StageRunner(store, LocalExecutor(), only_new=False, progress=False).run("again", later)
    assert fake_tasks == ["s1"]  # e1 is done and not run again


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
