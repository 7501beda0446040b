"""Run an expert teacher-forced over utterances and gather its Gram matrices and diagonal Fisher.

Inputs are training's (`training.labels`): the decoder reads the prompt
<|startoftranscript|> <|L|> <|T|> <|notimestamps|> and the reference's tokens; the loss scores the
reference tokens and <|endoftext|>. When the expert's encoder is the base's (a frozen-encoder or
decoder-only expert) only decoder weights get statistics (the encoder merges to the base's in any
method) and the encoder's outputs come from the encoder-output cache; otherwise the whole model
runs on log-mel features and every linear layer and parameter gets statistics.

Fisher: the empirical Fisher (Matena & Raffel 2022, §2, with the observed references in place of
labels sampled from the model): F = mean over utterances of g ⊙ g, g = ∇_θ log p(reference | audio)
of one utterance, so each utterance runs alone (batch 1) with a backward pass. Gram matrices alone
run `batch_size` utterances per forward under no_grad.

Threads: the passes run on `threads` torch threads (default 1, restored afterwards). A decoder pass
over ~20 token positions is hundreds of small operations; on a CPU shared with other work, each
parallel region of a 2-thread pass waits for a descheduled thread, and one thread was 2× (Gram
matrices) to 5× (with the Fisher) faster at load 8 on 2 cores (docs/data-aware.md, "Cost").
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import torch

from speechmerge.data.manifest import Utterance
from speechmerge.datastats.grams import GramHooks
from speechmerge.datastats.selection import data_hash, sample_utterances
from speechmerge.datastats.store import (
    EMPIRICAL_FISHER,
    FISHER_FILE,
    RECORD,
    GramEntry,
    Statistics,
    StatisticsRecord,
    StatisticsSettings,
    statistics_key,
)
from speechmerge.errors import SpeechmergeError
from speechmerge.fsutil import atomic_directory

DECODER = "model.decoder."
ENCODER = "model.encoder."


def expert_statistics(
    model: Union[str, Path, torch.nn.Module],
    utterances: list[Utterance],
    settings: StatisticsSettings = StatisticsSettings(),
    *,
    base: Union[str, Path, None] = None,
    processor: Optional[Path] = None,
    gram_bytes: Optional[int] = None,
    progress: bool = False,
    threads: int = 1,
) -> Statistics:
    """The statistics of `model` (a Whisper directory or spec, or a loaded
    `WhisperForConditionalGeneration` with `processor` naming a directory with its tokenizer and
    feature extractor) on `utterances`, from the cache or gathered and cached.

    With `base`, a model whose encoder equals the base's gets decoder statistics only. `gram_bytes`
    caps the Gram accumulators held at once (more passes over the data; the same statistics).
    `threads`: torch threads while gathering (module docstring)."""
    from speechmerge.cache import cache_dir
    from speechmerge.checkpoints.hf import HFCheckpoint
    from speechmerge.checkpoints.resolve import resolve_model_dir
    from speechmerge.features.encoder_cache import directory_encoder_key, tensors_digest

    if threads < 1:
        raise SpeechmergeError(f"statistics: threads {threads}; give at least 1")
    if isinstance(model, torch.nn.Module):
        if processor is None:
            raise SpeechmergeError("statistics: a loaded model needs processor= (a directory with its tokenizer)")
        directory, loaded = Path(processor), model
        model_hash, hash_of = tensors_digest(model.state_dict().items()), "tensors"
        encoder_key = tensors_digest(model.model.encoder.state_dict().items())
    else:
        directory, loaded = resolve_model_dir(model), None
        model_hash, hash_of = HFCheckpoint(directory).content_hash(), "weight files"
        encoder_key = directory_encoder_key(directory)
    same_encoder = base is not None and directory_encoder_key(resolve_model_dir(base)) == encoder_key
    parts = "decoder" if same_encoder else "model"
    chosen = sample_utterances(utterances, settings.utterances, settings.seed)
    data = data_hash(chosen)
    folder = cache_dir("statistics") / statistics_key(model_hash, data, settings, parts)
    if (folder / RECORD).is_file():
        return Statistics(folder)
    if loaded is None:
        from transformers import WhisperForConditionalGeneration

        from speechmerge.library_messages import library_messages

        with library_messages():
            loaded = WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    started = time.perf_counter()
    with atomic_directory(folder, force=True) as tmp, torch_threads(threads):
        grams, fishers, tokens = gather(
            loaded, directory, chosen, settings, parts, encoder_key, str(model), tmp, gram_bytes, progress
        )
        record = StatisticsRecord(
            model_hash=model_hash,
            model_hash_of=hash_of,
            data_hash=data,
            settings=settings,
            parts=parts,
            utterances=[u.id for u in chosen],
            tokens=tokens,
            fisher=EMPIRICAL_FISHER if fishers else None,
            grams=grams,
            fishers=fishers,
            seconds=time.perf_counter() - started,
        )
        (tmp / RECORD).write_text(record.model_dump_json(indent=1))
    return Statistics(folder)


@contextmanager
def torch_threads(count: int):
    """Run the block on `count` torch threads, then restore the previous number."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gather(
    model,
    directory: Path,
    utterances: list[Utterance],
    settings: StatisticsSettings,
    parts: str,
    encoder_key: str,
    label: str,
    folder: Path,
    gram_bytes: Optional[int] = None,
    progress: bool = False,
) -> tuple[dict[str, GramEntry], list[str], int]:
    """Write the statistics of `utterances` into `folder`; return (Gram entries, Fisher names, tokens scored).

    Gram matrices are gathered in passes over the data, each holding at most `gram_bytes` of
    accumulators (one pass when None); the first pass also gathers the Fisher."""
    from safetensors.torch import save_file

    from speechmerge.checkpoints.tokenizer import load_tokenizer
    from speechmerge.training.labels import PromptTokens, check_vocabulary, target_sequence

    tokenizer = load_tokenizer(directory)
    prompts = PromptTokens.of(tokenizer)
    check_vocabulary(prompts, {(u.language, u.task) for u in utterances}, label)
    targets = [target_sequence(tokenizer, prompts, u, model.config.max_target_positions) for u in utterances]
    prefixes = (DECODER,) if parts == "decoder" else (DECODER, ENCODER)
    encoder_side = _encoder_side(model, directory, parts, encoder_key)
    with_gram, with_fisher = "gram" in settings.statistics, "fisher" in settings.statistics
    passes = gram_passes(model, prefixes, gram_bytes) if with_gram else [()]
    entries: dict[str, GramEntry] = {}
    fisher: dict[str, torch.Tensor] = {}
    model.eval()
    run = _Run(model, targets, prompts.end, encoder_side, settings.batch_size, f"statistics of {label}")
    for index, pass_prefixes in enumerate(passes):
        hooks, pass_fisher = run(utterances, pass_prefixes, prefixes if with_fisher and index == 0 else (), progress)
        fisher.update(pass_fisher)
        if hooks.grams:
            file = f"grams-{index}.safetensors"
            save_file(
                {f"gram/{name}": gram.cpu().contiguous() for name, gram in hooks.grams.items()}, str(folder / file)
            )
            for weight, owner in hooks.gram_of.items():
                entries[weight] = GramEntry(file=file, tensor=f"gram/{owner}", rows=hooks.rows[owner])
            del hooks
    if fisher:
        save_file(
            {f"fisher/{name}": total.cpu().contiguous() for name, total in fisher.items()}, str(folder / FISHER_FILE)
        )
    return entries, sorted(fisher), sum(t.tokens for t in targets)


def gram_passes(model, prefixes: tuple[str, ...], limit: Optional[int]) -> list[tuple[str, ...]]:
    """Layer prefixes per pass so that each pass's float32 Gram accumulators take at most `limit` bytes
    (a layer larger than the limit gets a pass of its own); one pass of `prefixes` when `limit` is None."""
    if limit is None:
        return [prefixes]
    import re

    cost: dict[str, int] = {}
    for name, module in model.named_modules():
        layer = re.match(r".*\.layers\.\d+\.", name)
        if isinstance(module, torch.nn.Linear) and name.startswith(prefixes) and layer:
            shares_input = name.endswith(("self_attn.k_proj", "self_attn.v_proj", "encoder_attn.v_proj"))
            cost[layer[0]] = cost.get(layer[0], 0) + (0 if shares_input else 4 * module.in_features**2)
    passes: list[list[str]] = [[]]
    used = 0
    for layer, size in cost.items():
        if passes[-1] and used + size > limit:
            passes.append([])
            used = 0
        passes[-1].append(layer)
        used += size
    return [tuple(p) for p in passes]


class _Run:
    """One pass over the utterances with Gram hooks on some layers and, optionally, the Fisher of some parameters."""

    def __init__(self, model, targets, pad_id: int, encoder_side, batch_size: int, label: str):
        self.model, self.targets, self.pad_id, self.encoder_side = model, targets, pad_id, encoder_side
        self.batch_size, self.label = batch_size, label

    def __call__(self, utterances, gram_prefixes, fisher_prefixes, progress: bool):
        from speechmerge.progress import progress_bar
        from speechmerge.training.labels import pad_targets
        from speechmerge.training.loop import token_loss_sum

        model = self.model
        scope = {n: p for n, p in model.named_parameters() if fisher_prefixes and n.startswith(fisher_prefixes)}
        fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in scope.items()}
        trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in scope)
        step = 1 if scope else self.batch_size
        hooks = GramHooks(model, tuple(gram_prefixes))
        try:
            with hooks, progress_bar(progress, transient=True) as bar:
                task = bar.add_task(self.label, total=len(utterances))
                for start in range(0, len(utterances), step):
                    batch = self.targets[start : start + step]
                    inputs, labels = pad_targets(batch, self.pad_id)
                    lengths = torch.tensor([len(t.inputs) for t in batch])
                    hooks.start_batch(torch.arange(inputs.shape[1])[None, :] < lengths[:, None])
                    side = self.encoder_side(utterances[start : start + step])
                    if scope:
                        model.zero_grad(set_to_none=True)
                        token_loss_sum(model, side, inputs, labels).backward()  # −log p: the sign vanishes squared
                        for name, parameter in scope.items():
                            fisher[name].addcmul_(parameter.grad, parameter.grad)
                    else:
                        with torch.no_grad():
                            model(**side, decoder_input_ids=inputs, use_cache=False)
                    bar.advance(task, len(batch))
        finally:
            model.zero_grad(set_to_none=True)
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(trainable[name])
        return hooks, {name: total / len(utterances) for name, total in fisher.items()}


def _encoder_side(model, directory: Path, parts: str, encoder_key: str):
    """Batch of utterances -> the encoder-side arguments of the forward: cached encoder outputs when
    only the decoder has statistics, else log-mel features (the encoder runs, with gradients)."""
    from speechmerge.features.encoder_cache import EncoderOutputCache, encode_clips
    from speechmerge.features.log_mel import LogMel

    log_mel = LogMel(directory)
    if parts == "model":
        return lambda batch: {"input_features": torch.from_numpy(log_mel([u.audio for u in batch]))}
    cache = EncoderOutputCache(encoder_key, log_mel.settings)
    encoder = model.model.encoder

    def encode(features):
        return encoder(torch.from_numpy(features)).last_hidden_state

    return lambda batch: {"encoder_outputs": (encode_clips(encode, log_mel, [u.audio for u in batch], cache),)}
