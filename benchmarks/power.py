"""How many test clips a study needs per group: the power analysis behind the study recipes' sizes.

From an existing study store's per-utterance statistics (test stage), for each group and
primary metric (WER for transcription, BLEU for translation) and each candidate size m:

- sd_g(m): the bootstrap standard deviation of the paired difference score(B) − score(A) of
  two models on m clips of group g, drawn with replacement from the group's stored utterances
  (the m-out-of-n bootstrap: the stored clips stand for the population of clips; both models
  scored on the same draws, as the report's paired test does). Pairs: every merge against the
  study's reference line, every pair of merges (the median over pairs is reported), and the
  group's own expert against the base (the expert-gain test).
- a macro average over G groups of one metric, its groups resampled independently (the
  report's stratified bootstrap): sd(m) = sqrt(mean_g sd_g(m)²) / sqrt(G), the stored groups
  standing for the new study's G groups;
- the minimum detectable difference (paired, two-sided α, power 1 − β):
  (z_{1−α/2} + z_{1−β}) · sd (speechmerge.evaluation.significance.minimum_detectable_difference).

    python benchmarks/power.py /work/demo-run/runs/demo/study.sqlite --groups 10 --target 2
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import zlib
from collections import defaultdict
from pathlib import Path
from statistics import median

import numpy as np

from speechmerge.evaluation.bootstrap import resampled_scores
from speechmerge.evaluation.significance import minimum_detectable_difference
from speechmerge.evaluation.statistics import UtteranceStatistics

PRIMARY = ("wer", "bleu")
POINTS = {"wer": 100.0, "bleu": 1.0}  # a WER fraction in points; BLEU is already 0-100


def stored_groups(store: Path) -> dict[tuple[str, str, str], dict[str, UtteranceStatistics]]:
    """(scope, evaluation, metric) -> {model name: statistics} of the store's test-stage scores."""
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    rows = connection.execute(
        "SELECT j.name, j.kind, s.scope, u.evaluation, u.metric, u.statistics FROM utterance_statistics u "
        "JOIN jobs j ON j.key = u.job JOIN scores s ON s.job = u.job AND s.evaluation = u.evaluation "
        "AND s.metric = u.metric WHERE s.stage = 'test'"
    ).fetchall()
    groups: dict[tuple[str, str, str], dict[str, UtteranceStatistics]] = defaultdict(dict)
    for name, kind, scope, evaluation, metric, text in rows:
        if metric in PRIMARY and kind in ("test", "evaluate"):
            groups[(scope, evaluation, metric)][name.removeprefix("test ").removeprefix("score ")] = (
                UtteranceStatistics.model_validate_json(text)
            )
    return groups


def resampled(
    models: dict[str, UtteranceStatistics], metric: str, size: int, resamples: int, seed: list[int]
) -> dict[str, np.ndarray]:
    """Each model's score (in points) on the same `resamples` draws of `size` clips of the group."""
    ids = next(iter(models.values())).ids
    counts = np.random.default_rng(seed).multinomial(size, np.full(len(ids), 1 / len(ids)), size=resamples)
    out = {}
    for name, stats in models.items():
        if sorted(stats.ids) != sorted(ids):
            continue
        order = {uid: k for k, uid in enumerate(stats.ids)}
        array = stats.array[[order[uid] for uid in ids]].astype(float)
        out[name] = POINTS[metric] * resampled_scores(metric, array, counts)
    return out


def paired_sds(samples: dict[str, np.ndarray], reference: str, own_expert: str) -> dict[str, list[float]]:
    """SD of the paired difference: each merge against the reference, each pair of merges, and the
    group's own expert (named language-task, as `speechmerge study` names them) against the base."""

    def sd(a: str, b: str) -> float:
        return float(np.nanstd(samples[a] - samples[b], ddof=1))

    merges = [name for name in samples if name.split()[0] not in ("base", "expert", "baseline")]
    return {
        "merge vs reference": [sd(m, reference) for m in merges if reference in samples],
        "merge vs merge": [sd(a, b) for a, b in itertools.combinations(merges, 2)],
        "expert vs base": [sd(own_expert, "base base")] if {own_expert, "base base"} <= set(samples) else [],
    }


def power_table(
    groups: dict, sizes: list[int], group_count: int, reference: str, resamples: int, alpha: float, power: float
) -> list[dict]:
    """One row per (metric, pair kind, size): per-group and macro minimum detectable differences."""
    rows = []
    for metric in PRIMARY:
        cells = {key: models for key, models in groups.items() if key[2] == metric}
        for size in sizes:
            per_kind: dict[str, list[float]] = defaultdict(list)  # median SD over pairs, one per stored group
            for key, models in sorted(cells.items()):
                seed = [0, zlib.crc32("/".join(key).encode()), size]
                parts = key[1].split(".")  # <language>.<domain>.<split>.<task>
                own = f"expert {parts[0]}-{parts[-1]}"
                for kind, sds in paired_sds(resampled(models, metric, size, resamples, seed), reference, own).items():
                    if sds:
                        per_kind[kind].append(median(sds))
            for kind, sds in per_kind.items():
                group_sd = float(np.sqrt(np.mean(np.square(sds))))
                rows.append(
                    {
                        "metric": metric,
                        "pairs": kind,
                        "clips": size,
                        "stored groups": len(sds),
                        "group MDD": minimum_detectable_difference(group_sd, alpha, power),
                        "group MDD range": (
                            minimum_detectable_difference(min(sds), alpha, power),
                            minimum_detectable_difference(max(sds), alpha, power),
                        ),
                        "macro MDD": minimum_detectable_difference(group_sd / np.sqrt(group_count), alpha, power),
                    }
                )
    return rows


def markdown(rows: list[dict], group_count: int, target: float) -> str:
    lines = [
        f"| metric | pairs | clips per group | stored groups | per-group MDD (points) [range over groups] "
        f"| MDD of the macro average over {group_count} groups | ≤ {target:g}? |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        low, high = r["group MDD range"]
        ok = "yes" if r["macro MDD"] <= target else "no"
        lines.append(
            f"| {r['metric'].upper()} | {r['pairs']} | {r['clips']} | {r['stored groups']} | "
            f"{r['group MDD']:.1f} [{low:.1f}, {high:.1f}] | {r['macro MDD']:.2f} | {ok} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store", type=Path, help="a study.sqlite with per-utterance statistics")
    parser.add_argument("--reference", default="baseline joint", help="the report's reference line")
    parser.add_argument("--groups", type=int, default=10, help="groups of one metric in the macro average")
    parser.add_argument("--sizes", default="8,16,20,32,50,64,100", help="clips per group to evaluate")
    parser.add_argument("--target", type=float, default=2.0, help="the difference (points) to detect")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--resamples", type=int, default=400)
    args = parser.parse_args()
    groups = stored_groups(args.store)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = power_table(groups, sizes, args.groups, args.reference, args.resamples, args.alpha, args.power)
    print(markdown(rows, args.groups, args.target))


if __name__ == "__main__":
    main()
