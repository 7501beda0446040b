"""Time `speechmerge compare` on two synthetic evaluations (no decoding): GROUP_SIZE utterances in
each of es/transcribe, fr/transcribe (WER, CER off) and es/translate (BLEU, chrF), every test on.

    PYTHONPATH=. python benchmarks/bench_significance.py [--size 500] [--runs 3]

Prints each run's wall time, the median and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = "uno dos tres cuatro cinco seis siete ocho nueve diez once doce".split()


def write_folder(folder: Path, size: int, error_rate: float, seed: int) -> None:
    from speechmerge.data.manifest import Utterance
    from speechmerge.evaluation.prediction_cache import CachedDecode
    from speechmerge.evaluation.scoring import score_prediction

    texts = np.random.default_rng(0)
    noise = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = []
    for language, task in (("es", "transcribe"), ("fr", "transcribe"), ("es", "translate")):
        for index in range(size):
            reference = " ".join(texts.choice(WORDS, size=9))
            utterance = Utterance(
                id=f"{language}-{task}-{index}",
                audio="/clips/none.wav",
                text=reference,
                translation=reference if task == "translate" else None,
                language=language,
                task=task,
            )
            hypothesis = " ".join(w if noise.random() > error_rate else "x" for w in reference.split())
            decoded = CachedDecode(text=hypothesis, language=language)
            lines.append(score_prediction(utterance, "bench", decoded, cer=False).model_dump_json())
    (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps({"model": folder.name}), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=500, help="utterances per group")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        a, b = Path(root) / "a", Path(root) / "b"
        write_folder(a, args.size, 0.30, seed=1)
        write_folder(b, args.size, 0.25, seed=2)
        print(f"load before: {os.getloadavg()}")
        seconds = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "speechmerge.cli", "compare", str(a), str(b), "--json"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            seconds.append(time.perf_counter() - started)
        print(f"load after: {os.getloadavg()}")
    print(f"{3 * args.size} utterances: " + ", ".join(f"{s:.1f}" for s in seconds) + " s")
    print(f"median {statistics.median(seconds):.1f} s")


if __name__ == "__main__":
    main()
