"""Write the sized manifests a study recipe reads (speechmerge.data.subsets), from a built corpus.

    python scripts/study_sets.py multilingual runs/sets/multilingual \
        --size train=160 --size validation=24 --size test/general=50 --size test/heldout=12

Builds the corpus first when it is missing (`speechmerge data build --corpus NAME --size full`).
The sizes of recipes/multilingual.yaml and recipes/multidomain.yaml, and how they were chosen, are
in docs/results.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechmerge.data.corpus import build_corpus
from speechmerge.data.subsets import subset_corpus
from speechmerge.errors import SpeechmergeError


def parse_size(text: str) -> tuple[str, int]:
    key, _, value = text.partition("=")
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected SPLIT[/DOMAIN[/LANGUAGE]]=CLIPS, e.g. test=50")
    return key, int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", choices=["multilingual", "multidomain"])
    parser.add_argument("output", type=Path, help="folder of the sized manifests")
    parser.add_argument("--corpus-size", default="full", choices=["tiny", "demo", "full"])
    parser.add_argument("--seed", type=int, default=0, help="the corpus's seed, and the subsets' choice")
    parser.add_argument("--size", type=parse_size, action="append", default=[], help="SPLIT[/DOMAIN[/LANGUAGE]]=CLIPS")
    args = parser.parse_args()
    corpus = build_corpus(args.corpus, args.corpus_size, seed=args.seed)
    try:
        written = subset_corpus(corpus.directory, args.output, dict(args.size), seed=args.seed)
    except SpeechmergeError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{len(written)} manifests in {args.output}")


if __name__ == "__main__":
    main()
