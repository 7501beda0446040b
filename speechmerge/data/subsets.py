"""Smaller copies of a built corpus's manifests: the sizes a study's power analysis and cost model choose.

A study recipe reads a corpus whole (or the first N clips of every evaluation set alike); a sized
study wants each role at its own size: enough test clips per in-domain group for its power
(benchmarks/power.py), fewer out-of-domain and validation clips, and only the training clips its
steps will read (each is run through the encoder once). `subset_corpus` writes, for every
manifest of a corpus, the clips whose ids come first in a permutation seeded by (seed, language,
domain, split); the same clips in a language's `transcribe` and `translate` manifests, so the two
tasks' experts share their encoder outputs. Audio paths are absolute (the clips stay where the
corpus built them). Splits are kept as they are, so validation and test never share a clip.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from speechmerge.data.corpus import ManifestInfo, open_corpus
from speechmerge.data.manifest import read_manifest, write_manifest
from speechmerge.errors import SpeechmergeError


def kept_ids(ids: list[str], count: int | None, seed: int, labels: tuple[str, ...]) -> set[str]:
    """The first `count` of the distinct ids in a permutation seeded by (seed, labels); all when None."""
    distinct = sorted(set(ids))
    if count is None or count >= len(distinct):
        return set(distinct)
    rng = np.random.default_rng([seed, zlib.crc32("/".join(labels).encode())])
    return {distinct[k] for k in rng.permutation(len(distinct))[:count]}


def subset_corpus(
    corpus_dir: Path, output: Path, sizes: Mapping[str, int | None], seed: int = 0, default: int | None = None
) -> dict[str, Path]:
    """Write the sized manifests of `corpus_dir` into `output`; returns manifest name -> path.

    `sizes`: clips per manifest by `split` or `split/domain` (the more specific wins), e.g.
    {"train": 160, "validation": 24, "test/general": 50, "test/heldout": 16, "test/general/en": 50};
    `test/<domain>/<language>` is the most specific. Manifests matching no key keep `default` clips."""
    corpus = open_corpus(Path(corpus_dir))
    unknown = sorted(k for k in sizes if k.split("/")[0] not in {i.split for i in corpus.index.manifests})
    if unknown:
        raise SpeechmergeError(
            f"subset sizes {unknown}: no manifest of {corpus_dir} has that split; "
            f"its splits are {sorted({i.split for i in corpus.index.manifests if i.split})}"
        )
    written = {}
    for info in corpus.index.manifests:
        count = _size(sizes, info, default)
        utterances = read_manifest(corpus.path(info))
        keep = kept_ids([u.id for u in utterances], count, seed, (info.language, info.domain or "-", info.split or "-"))
        path = Path(output) / Path(info.path).name
        write_manifest(path, [u for u in utterances if u.id in keep])
        written[path.stem] = path
    return written


def _size(sizes: Mapping[str, int | None], info: ManifestInfo, default: int | None) -> int | None:
    split, domain = info.split or "-", info.domain or "-"
    for key in (f"{split}/{domain}/{info.language}", f"{split}/{domain}", split):
        if key in sizes:
            return sizes[key]
    return default
