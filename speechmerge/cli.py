"""The `speechmerge` command line: one typer app, one sub-command per job.

Heavy libraries (torch, transformers) are imported inside the commands so that
`speechmerge --help` stays instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from speechmerge.errors import SpeechmergeError

app = typer.Typer(
    name="speechmerge",
    help="Merge fine-tuned Whisper models and measure which merge is best.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks on errors, and the libraries' warnings and progress bars."
    ),
) -> None:
    _state["debug"] = debug
    if debug:
        from speechmerge.library_messages import DEBUG_VARIABLE

        os.environ[DEBUG_VARIABLE] = "1"


@app.command()
def merge(
    recipe: Path = typer.Argument(..., help="YAML merge recipe (see `speechmerge methods`)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output directory (overrides the recipe's)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    shard_size: Optional[str] = typer.Option(
        None, help="Largest output shard, e.g. 500MB or 2GB (overrides the recipe's)."
    ),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or auto (overrides the recipe's)."),
    memory_budget: Optional[str] = typer.Option(
        None, help="Bytes of inputs and work held at once, e.g. 512MB (overrides the recipe's)."
    ),
) -> None:
    """Merge a base Whisper and its fine-tuned experts as a recipe says."""
    from speechmerge.merging.api import merge_from_recipe_file

    merge_from_recipe_file(
        recipe, output=output, force=force, shard_size=shard_size, device=device, memory_budget=memory_budget
    )


@app.command()
def search(
    recipe: Path = typer.Argument(..., help="YAML search recipe: a merge recipe, the space, validation data, budgets."),
) -> None:
    """Search merge weights and parameters on validation speech (Optuna); write the best recipe and model."""
    from speechmerge.search.command import search_command

    search_command(recipe)


@app.command()
def adamerge(
    recipe: Path = typer.Argument(..., help="YAML AdaMerging recipe: merge recipe, unlabelled data, variant, steps."),
) -> None:
    """Learn per-layer merge coefficients without labels (AdaMerging: entropy minimisation); write them as a recipe."""
    from speechmerge.search.command import adamerge_command

    adamerge_command(recipe)


@app.command()
def methods(
    name: Optional[str] = typer.Argument(None, help="Show one method in full."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown reference (docs/methods.md)."),
) -> None:
    """List every merge method with its parameters, defaults and source."""
    from speechmerge.merging.describe import print_methods

    print_methods(name, markdown=markdown)


@app.command()
def convert(
    source: str = typer.Argument(
        ...,
        help="builtin:whisper-base, a CTranslate2 directory (model.bin), an openai-whisper .pt file, "
        "or (with --to ct2) a Hugging Face Whisper directory.",
    ),
    output: Path = typer.Argument(..., help="Directory to create (refused if it exists, unless --force)."),
    to: str = typer.Option(
        "hf", "--to", help="Output format: hf (Hugging Face Whisper) or ct2 (CTranslate2, for faster-whisper)."
    ),
    quantization: str = typer.Option(
        "float16",
        help="With --to ct2: float32, float16, bfloat16, int8, int8_float16, int8_float32, int8_bfloat16 or int16.",
    ),
    dtype: str = typer.Option(
        "float32", help="With --to hf: weight dtype of the output, float32, float16 or bfloat16."
    ),
    tokenizer: Optional[Path] = typer.Option(
        None, help="Directory or tokenizer.json to use when the source has none; it is checked before use."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
) -> None:
    """Convert a Whisper model between CTranslate2, openai-whisper and Hugging Face formats."""
    from rich.console import Console

    from speechmerge.checkpoints.convert import convert_model

    target = convert_model(
        source, output, to=to, quantization=quantization, dtype=dtype, tokenizer=tokenizer, force=force
    )
    Console(stderr=True).print(f"[green]converted[/] {source} -> {target} ({to})", highlight=False)


@app.command("eval")
def eval_command(
    model: str = typer.Argument(
        ...,
        help="Model to evaluate: a Hugging Face Whisper directory, builtin:whisper-base, a CTranslate2 directory, a .pt file or a hub id.",
    ),
    data: list[Path] = typer.Argument(
        ...,
        help="Manifests (.jsonl/.csv) and/or built corpus folders (every manifest of the corpus that matches the filters).",
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="Folder for predictions.jsonl and summary.{md,csv,json} (default: ./eval-<model name>).",
    ),
    backend: str = typer.Option(
        "transformers",
        help="transformers (the reference), torch (greedy from cached encoder outputs, the reference's text) "
        "or ctranslate2 (the model exported to CTranslate2).",
    ),
    quantization: Optional[str] = typer.Option(
        None, help="Weights: torch float32 (default) or int8; ctranslate2 int8 (default), float32, int8_float32, int16."
    ),
    encoder_window: str = typer.Option(
        "full", help="full (30 s) or audio (cross-attend only to the positions holding audio plus 1 s; changes texts)."
    ),
    cross_attention: str = typer.Option(
        "keys",
        help="torch backend: keys (cross-attention keys and values formed once per clip, the reference's text) "
        "or encoder (attend over the encoder output without them: faster, equal to rounding).",
    ),
    beam_size: int = typer.Option(1, help="1 = greedy search; more = beam search with that many beams."),
    batch_size: Optional[int] = typer.Option(
        None,
        help="Clips decoded together (default: the fastest measured on CPU, 8).",
    ),
    detect_language: bool = typer.Option(
        False, "--detect-language", help="Decode in the language Whisper detects instead of the manifest's."
    ),
    language_id: bool = typer.Option(
        False,
        "--language-id",
        help="Also detect each clip's language and report LID accuracy (one more decoder pass per clip).",
    ),
    max_new_tokens: Optional[int] = typer.Option(
        None, help="Token budget per clip (default: half the decoder's context, 224 for Whisper)."
    ),
    cer: bool = typer.Option(
        False, "--cer", help="Also report CER for languages written with spaces (always reported for the others)."
    ),
    language: Optional[str] = typer.Option(
        None, "--language", "-l", help="Comma-separated languages to keep, e.g. es,de (default: all)."
    ),
    task: Optional[str] = typer.Option(
        None, "--task", "-t", help="transcribe, translate or both comma-separated (default: all)."
    ),
    domain: Optional[str] = typer.Option(None, help="Comma-separated domains to keep (default: all)."),
    split: Optional[str] = typer.Option(None, help="Comma-separated splits to keep, e.g. test (default: all)."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip (and report) bad manifest lines instead of stopping."
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Decode again even when cached predictions exist (they are refreshed)."
    ),
    encoder_cache: bool = typer.Option(
        True,
        "--encoder-cache/--no-encoder-cache",
        help="Reuse the float32 encoder outputs across models that share the encoder (3 MB per clip for whisper-base); off: ctranslate2 runs its own encoder in its weight type.",
    ),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: torch's default)."),
    confidence: float = typer.Option(0.95, help="Level of each score's bootstrap interval (0-1)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Decode a model on manifests and report WER/CER (transcribe) and BLEU/chrF (translate) per language, task, domain and split."""
    from speechmerge.evaluation.api import LabelFilter
    from speechmerge.evaluation.command import build_options, run_eval_command

    options = build_options(
        cer,
        no_cache,
        confidence,
        backend=backend,
        quantization=quantization,
        beam_size=beam_size,
        batch_size=batch_size,
        language="detect" if detect_language else "manifest",
        language_id=language_id,
        max_new_tokens=max_new_tokens,
        encoder_cache=encoder_cache,
        threads=threads,
        encoder_window=encoder_window,
        cross_attention=cross_attention,
    )
    labels = LabelFilter(*(tuple(_comma_list(value)) if value else None for value in (language, task, domain, split)))
    run_eval_command(model, data, output, options, labels, skip_bad=skip_bad, force=force)


@app.command()
def compare(
    a: Path = typer.Argument(
        ..., help="The first (reference) evaluation: a folder written by `speechmerge eval` (a model with --data)."
    ),
    b: Path = typer.Argument(..., help="The second evaluation, of the same utterances (a model with --data)."),
    data: Optional[list[Path]] = typer.Option(
        None,
        "--data",
        "-d",
        help="Manifests or corpus folders: A and B are then models, decoded (default options, prediction cache) on them.",
    ),
    confidence: float = typer.Option(0.95, help="Confidence level of the intervals; 1 - confidence is the test level."),
    resamples: int = typer.Option(1000, help="Bootstrap resamples (and sacrebleu's paired-bootstrap resamples)."),
    seed: int = typer.Option(12345, min=1, help="Seed of every resampling (sacrebleu's default; reproducible)."),
    by_speaker: bool = typer.Option(
        False, "--by-speaker", help="Resample whole speakers instead of utterances (manifests must name speakers)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV instead of the table."),
) -> None:
    """Is B better than A? Per group and macro average: both scores with intervals, B - A with its interval, the p-value of each test, a verdict."""
    from speechmerge.evaluation.compare import as_csv as csv_text
    from speechmerge.evaluation.compare import as_json as json_text
    from speechmerge.evaluation.compare import compare_evaluations, evaluate_model, markdown, read_evaluation

    if as_json and as_csv:
        raise SpeechmergeError("--json and --csv: choose one output format")
    first, second = (evaluate_model(str(m), data) for m in (a, b)) if data else map(read_evaluation, (a, b))
    result = compare_evaluations(first, second, confidence, resamples, seed, by_speaker)
    print(json_text(result) if as_json else csv_text(result) if as_csv else markdown(result), end="")
    if result.too_small and (as_json or as_csv):
        for line in result.too_small:
            print(f"note: {line}", file=sys.stderr)


data_app = typer.Typer(
    help="Speech data: build the built-in espeak-ng corpora, check manifests, import Hugging Face datasets.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build(
    corpus: str = typer.Option("both", help="multilingual, multidomain, or both."),
    size: str = typer.Option("demo", help="tiny (smoke tests), demo (the 20-minute demo) or full (the studies)."),
    languages: Optional[str] = typer.Option(
        None, help="Comma-separated languages, e.g. es,de,fr (English is always added). Default: the size's."
    ),
    domains: Optional[str] = typer.Option(None, help="Comma-separated multidomain domains (default: all ten)."),
    seed: int = typer.Option(0, help="Seed of voices and noises: same seed, same corpus."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Root folder (default: the speechmerge cache)."),
    workers: Optional[int] = typer.Option(None, help="espeak-ng processes at once (default: one per CPU core)."),
) -> None:
    """Speak the built-in corpora with espeak-ng (once; later builds reuse every clip)."""
    from speechmerge.data.corpus import build_corpus
    from speechmerge.data.report import print_corpus

    if corpus not in ("multilingual", "multidomain", "both"):
        raise SpeechmergeError(f"--corpus {corpus!r}: choose multilingual, multidomain or both")
    chosen = ("multilingual", "multidomain") if corpus == "both" else (corpus,)
    for name in chosen:
        only_domains = _comma_list(domains) if name == "multidomain" else None
        built = build_corpus(
            name,
            size,
            root=output,
            seed=seed,
            languages=_comma_list(languages),
            domains=only_domains,
            progress=True,
            workers=workers,
        )
        print_corpus(built)


def _comma_list(text: Optional[str]) -> Optional[list[str]]:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


@data_app.command("check")
def data_check(
    manifest: Path = typer.Argument(..., help="A JSONL or CSV manifest."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="List bad lines as skipped and exit 0."),
) -> None:
    """Check every line of a manifest (audio, text, language, task, length, ids); list the bad ones."""
    from speechmerge.data.manifest import scan_manifest
    from speechmerge.data.report import print_scan

    try:
        print_scan(scan_manifest(manifest))
    except SpeechmergeError:
        if not skip_bad:
            raise


@data_app.command("stats")
def data_stats(
    corpus: Path = typer.Argument(
        ..., help="A built corpus folder (its corpus.json), e.g. ~/.cache/speechmerge/corpus/multilingual-full-seed0."
    ),
) -> None:
    """Sizes of a built corpus and the vocabulary overlap of its evaluation sets with its training text."""
    from speechmerge.data.corpus import open_corpus
    from speechmerge.data.report import print_corpus, print_overlaps

    built = open_corpus(corpus)
    print_corpus(built)
    print_overlaps(built)


@data_app.command("import")
def data_import(
    source: Path = typer.Argument(..., help="A Hugging Face dataset saved with save_to_disk, or an audiofolder."),
    output: Path = typer.Argument(..., help="Folder for the manifests (one per split) and 16 kHz WAV files."),
    column: list[str] = typer.Option([], "--column", "-c", help="FIELD=COLUMN, e.g. text=sentence (repeatable)."),
    language: Optional[str] = typer.Option(None, help="Whisper language code for every row (when no column holds it)."),
    task: Optional[str] = typer.Option(
        None, help="transcribe or translate for every row (default: a task column, else transcribe)."
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave bad rows out and report them, instead of stopping."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Turn a Hugging Face speech dataset into speechmerge manifests."""
    from speechmerge.data.hf_import import import_dataset, parse_columns
    from speechmerge.data.report import print_imported

    print_imported(
        import_dataset(
            source, output, parse_columns(column), language=language, task=task, skip_bad=skip_bad, force=force
        )
    )


@app.command()
def finetune(
    base: str = typer.Argument(
        ...,
        help="Model to start from: builtin:whisper-base, a Hugging Face Whisper directory or hub id, a CTranslate2 directory or an openai-whisper .pt.",
    ),
    output: Path = typer.Argument(
        ...,
        help="Expert directory to create; until it is complete the run lives in OUTPUT.partial, and rerunning the same command resumes it.",
    ),
    data: list[Path] = typer.Option(
        ...,
        "--data",
        "-d",
        help="A manifest, a folder of manifests or a built corpus (repeatable). split=train trains, split=validation validates.",
    ),
    language: Optional[str] = typer.Option(
        None, "--language", "-l", help="Comma-separated languages to keep, e.g. es or es,de (default: all)."
    ),
    task: Optional[str] = typer.Option(
        None, "--task", "-t", help="transcribe, translate or both comma-separated (default: all)."
    ),
    domain: Optional[str] = typer.Option(None, help="Comma-separated domains to keep (default: all)."),
    baseline: Optional[str] = typer.Option(
        None,
        help="Make a baseline instead of one expert: joint (one run on the union of the experts' data, experts x --steps steps) "
        "or sequential (one stage of --steps per expert, in the order of --language/--task/--domain). An expert is a (language, task, domain) group.",
    ),
    mode: str = typer.Option(
        "full",
        help="full (every weight), decoder (encoder frozen, its outputs computed once: ~10x cheaper on CPU), "
        "top_encoder (the decoder and the top --encoder-layers encoder layers; the lower layers' outputs computed once) or lora (PEFT adapters).",
    ),
    encoder_layers: Optional[int] = typer.Option(
        None, help="With --mode top_encoder: how many of the encoder's top layers train (1 to its layer count)."
    ),
    steps: int = typer.Option(60, help="Optimiser steps (per expert for --baseline); early stopping may end sooner."),
    lr: float = typer.Option(1e-5, "--lr", help="Peak learning rate (AdamW)."),
    batch_size: int = typer.Option(8, help="Utterances per micro-batch."),
    gradient_accumulation: int = typer.Option(1, help="Micro-batches per optimiser step."),
    warmup_ratio: float = typer.Option(0.1, help="Fraction of the steps of linear warm-up from 0."),
    schedule: str = typer.Option("linear", help="Decay after warm-up: linear, cosine or constant_with_warmup."),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay."),
    eval_every: int = typer.Option(10, help="Steps between validations; each saves a resumable checkpoint."),
    patience: int = typer.Option(
        3, help="Stop after this many validations without a lower validation loss (0: never)."
    ),
    validation_fraction: float = typer.Option(
        0.1, help="Held out of the training data when the selection has no validation split."
    ),
    seed: int = typer.Option(0, help="Seed of the data order and of LoRA's initialisation."),
    device: str = typer.Option("auto", help="auto (cuda when available), cpu or cuda."),
    precision: str = typer.Option("auto", help="auto (fp32 on CPU; bf16, else fp16, on GPU), fp32, bf16 or fp16."),
    spec_augment: bool = typer.Option(
        False,
        "--spec-augment",
        help="Mask time and frequency bands of the encoder input (SpecAugment); needs the encoder to train.",
    ),
    lora_rank: int = typer.Option(16, help="LoRA rank r."),
    lora_alpha: float = typer.Option(32.0, help="LoRA alpha (update = B·A·alpha/r)."),
    lora_modules: str = typer.Option(
        "q_proj,k_proj,v_proj,out_proj,fc1,fc2", help="Comma-separated block layers that get adapters."
    ),
    lora_encoder: bool = typer.Option(
        True,
        "--lora-encoder/--no-lora-encoder",
        help="Adapters in the encoder too (off: the encoder is frozen and its outputs computed once).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with loss and ETA."),
) -> None:
    """Fine-tune a Whisper base into an expert (or a joint / sequential baseline) that `merge` accepts."""
    from rich.console import Console

    from speechmerge.training.command import run_finetune_command

    settings = dict(
        mode=mode,
        encoder_layers=encoder_layers,
        steps=steps,
        learning_rate=lr,
        batch_size=batch_size,
        gradient_accumulation=gradient_accumulation,
        warmup_ratio=warmup_ratio,
        schedule=schedule,
        weight_decay=weight_decay,
        eval_every=eval_every,
        patience=patience,
        validation_fraction=validation_fraction,
        seed=seed,
        device=device,
        precision=precision,
        spec_augment=spec_augment,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_modules=tuple(_comma_list(lora_modules) or ()),
        lora_encoder=lora_encoder,
    )
    filters = dict(
        languages=_comma_list(language) or [], tasks=_comma_list(task) or [], domains=_comma_list(domain) or []
    )
    made = run_finetune_command(
        base, output, data, filters, settings, baseline=baseline, force=force, progress=progress
    )
    Console(stderr=True).print(f"[green]trained[/] {made}", highlight=False)


@app.command()
def study(
    recipe: Path = typer.Argument(
        ...,
        help="Study recipe (YAML): base, corpus, experts, baselines, methods grid (docs/study.md; e.g. recipes/demo.yaml).",
    ),
    executor: str = typer.Option("local", help="local (in this process, or a process pool with --workers > 1) or ray."),
    workers: Optional[int] = typer.Option(
        None, help="Jobs at once (default: local: min(cores/2, free memory/2 GB); ray: cluster CPUs / 2)."
    ),
    address: Optional[str] = typer.Option(
        None,
        help="With --executor ray: the cluster address (e.g. ray://head:10001 or auto); default: a local Ray instance.",
    ),
    only_new: bool = typer.Option(
        False, "--only-new", help="Run only jobs never tried before (leave failed ones failed)."
    ),
    report_only: bool = typer.Option(
        False, "--report-only", help="Only render the report again from the study's store."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Study folder (overrides the recipe's `output`; default runs/<name>)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Run (or resume) a study: experts, baselines, a merge grid searched on validation, the best on test, a report."""
    from rich.console import Console

    from speechmerge.study.runner import run_study

    folder = run_study(
        recipe,
        executor=executor,
        workers=workers,
        address=address,
        only_new=only_new,
        report_only=report_only,
        output=output,
        progress=progress,
    )
    Console(stderr=True).print(f"[green]study done[/] {folder} (scores: speechmerge results {folder})", highlight=False)


@app.command()
def results(
    study: Path = typer.Argument(..., help="A study folder (with study.sqlite) or the .sqlite file."),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="Comma-separated methods or model names to keep."
    ),
    stage: Optional[str] = typer.Option(None, help="validation or test."),
    metric: Optional[str] = typer.Option(None, help="Comma-separated metrics to keep: wer, cer, bleu, chrf."),
    kind: Optional[str] = typer.Option(
        None, help="Comma-separated model kinds to keep: base, expert, baseline, merge."
    ),
    format: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    jobs: bool = typer.Option(
        False, "--jobs", help="List the jobs (status, time, attempts, errors) instead of scores."
    ),
    every_job: bool = typer.Option(
        False, "--all", help="Include jobs of earlier versions of the recipe (not in the current plan)."
    ),
    report: bool = typer.Option(
        False, "--report", help="Render the study's report again (report/report.md and .html) and stop."
    ),
) -> None:
    """Query a study's store: scores per model, stage, scope, group and metric; or its jobs."""
    if report:
        from speechmerge.study.results import open_store
        from speechmerge.study.runner import render_report

        render_report(open_store(study))
        return
    from speechmerge.study.results import print_results

    print_results(study, _comma_list(method), stage, _comma_list(metric), _comma_list(kind), format, jobs, every_job)


def main() -> None:
    """Entry point: run the app; user errors become one red line and exit status 2."""
    try:
        app()
    except SpeechmergeError as error:
        if _state["debug"]:
            raise
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
