"""Converted models are built once, even when several processes ask at the same time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from speechmerge.checkpoints.converted import convert_once
    from speechmerge.fsutil import atomic_directory

    def build(target):
        with open(sys.argv[1], "a") as log:
            log.write(f"{os.getpid()}\\n")
        with atomic_directory(target) as tmp:
            time.sleep(1.0)  # long enough for the other process to arrive meanwhile
            (tmp / "config.json").write_text("{}")

    print(convert_once("demo-model", build))
    """
)


def test_two_processes_convert_once_and_see_a_complete_directory(tmp_path):
    env = {**os.environ, "SPEECHMERGE_MODEL_CACHE": str(tmp_path / "models")}
    log = tmp_path / "builds.log"
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(log)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=120)[0].strip() for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    assert outputs[0] == outputs[1] == str(tmp_path / "models" / "demo-model")
    assert len(log.read_text().split()) == 1  # built by one process only
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".demo-model.lock", "demo-model"]
