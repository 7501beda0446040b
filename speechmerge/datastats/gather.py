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
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import torch

from speechmerge.data.manifest import Utterance
from speechmerge.datastats.grams import GramHooks
from speechmerge.datastats.selection import data_hash, sample_utterances
from speechmerge.datastats.store import (
    EMPIRICAL_FISHER,
    GramEntry,
    Statistics,
    StatisticsRecord,
    StatisticsSettings,
    statistics_key,
    write_statistics,
)
from speechmerge.errors import SpeechmergeError

DECODER = "model.decoder."
ENCODER = "model.encoder."


def expert_statistics(
    model: Union[str, Path, torch.nn.Module],
    utterances: list[Utterance],
    settings: StatisticsSettings = StatisticsSettings(),
    *,
    base: Union[str, Path, None] = None,
    processor: Optional[Path] = None,
    progress: bool = False,
) -> Statistics:
    """The statistics of `model` (a Whisper directory or spec, or a loaded
    `WhisperForConditionalGeneration` with `processor` naming a directory with its tokenizer and
    feature extractor) on `utterances`, from the cache or gathered and cached.

    With `base`, a model whose encoder equals the base's gets decoder statistics only."""
    from speechmerge.cache import cache_dir
    from speechmerge.checkpoints.reader import HFCheckpoint, resolve_model_dir
    from speechmerge.evaluation.encoder_cache import directory_encoder_key, module_encoder_key, tensors_digest

    if isinstance(model, torch.nn.Module):
        if processor is None:
            raise SpeechmergeError("statistics: a loaded model needs processor= (a directory with its tokenizer)")
        directory, loaded = Path(processor), model
        model_hash, hash_of = tensors_digest(model.state_dict().items()), "tensors"
        encoder_key = module_encoder_key(model.model.encoder)
    else:
        directory, loaded = resolve_model_dir(model), None
        model_hash, hash_of = HFCheckpoint(directory).content_hash(), "weight files"
        encoder_key = directory_encoder_key(directory)
    same_encoder = base is not None and directory_encoder_key(resolve_model_dir(base)) == encoder_key
    parts = "decoder" if same_encoder else "model"
    chosen = sample_utterances(utterances, settings.utterances, settings.seed)
    data = data_hash(chosen)
    folder = cache_dir("statistics") / statistics_key(model_hash, data, settings, parts)
    if (folder / "statistics.json").is_file():
        return Statistics(folder)
    if loaded is None:
        from transformers import WhisperForConditionalGeneration

        loaded = WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    started = time.perf_counter()
    tensors, grams, fishers, tokens = gather(
        loaded, directory, chosen, settings, parts, encoder_key, label=str(model), progress=progress
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
    write_statistics(folder, record, tensors)
    return Statistics(folder)


def gather(
    model,
    directory: Path,
    utterances: list[Utterance],
    settings: StatisticsSettings,
    parts: str,
    encoder_key: str,
    label: str,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, GramEntry], list[str], int]:
    """(tensors to store, Gram entries, Fisher parameter names, tokens scored) of one run over `utterances`."""
    from speechmerge.checkpoints.tokenizer import load_tokenizer
    from speechmerge.progress import progress_bar
    from speechmerge.training.labels import PromptTokens, check_vocabulary, pad_targets, target_sequence
    from speechmerge.training.loop import token_loss_sum

    tokenizer = load_tokenizer(directory)
    prompts = PromptTokens.of(tokenizer)
    check_vocabulary(prompts, {(u.language, u.task) for u in utterances}, label)
    targets = [target_sequence(tokenizer, prompts, u, model.config.max_target_positions) for u in utterances]
    prefixes = (DECODER,) if parts == "decoder" else (DECODER, ENCODER)
    encoder_side = _encoder_side(model, directory, parts, encoder_key)
    with_fisher = "fisher" in settings.statistics
    scope = {name: p for name, p in model.named_parameters() if name.startswith(prefixes)} if with_fisher else {}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in scope.items()}
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in scope)
    model.eval()
    step = 1 if with_fisher else settings.batch_size
    hooks = GramHooks(model, prefixes if "gram" in settings.statistics else ())
    try:
        with hooks, progress_bar(progress, transient=True) as bar:
            task = bar.add_task(f"statistics of {label}", total=len(utterances))
            for start in range(0, len(utterances), step):
                batch = targets[start : start + step]
                inputs, labels = pad_targets(batch, prompts.end)
                lengths = torch.tensor([len(t.inputs) for t in batch])
                hooks.start_batch(torch.arange(inputs.shape[1])[None, :] < lengths[:, None])
                side = encoder_side(utterances[start : start + step])
                if with_fisher:
                    model.zero_grad(set_to_none=True)
                    token_loss_sum(model, side, inputs, labels).backward()  # −log p: the sign vanishes when squared
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
    tensors = {f"gram/{name}": gram.cpu() for name, gram in hooks.grams.items()}
    tensors.update({f"fisher/{name}": (total / len(utterances)).cpu() for name, total in fisher.items()})
    grams = {
        weight: GramEntry(tensor=f"gram/{owner}", rows=hooks.rows[owner]) for weight, owner in hooks.gram_of.items()
    }
    return tensors, grams, sorted(fisher), sum(t.tokens for t in targets)


def _encoder_side(model, directory: Path, parts: str, encoder_key: str):
    """Batch of utterances -> the encoder-side arguments of the forward: cached encoder outputs when
    only the decoder has statistics, else log-mel features (the encoder runs, with gradients)."""
    from speechmerge.evaluation.encoder_cache import EncoderOutputCache, encode_clips
    from speechmerge.training.inputs import log_mel_of

    log_mel = log_mel_of(directory)
    if parts == "model":
        return lambda batch: {"input_features": torch.from_numpy(log_mel([u.audio for u in batch]))}
    cache = EncoderOutputCache(encoder_key, log_mel.settings)
    encoder = model.model.encoder

    def encode(features):
        return encoder(torch.from_numpy(features)).last_hidden_state

    return lambda batch: {"encoder_outputs": (encode_clips(encode, log_mel, [u.audio for u in batch], cache),)}
