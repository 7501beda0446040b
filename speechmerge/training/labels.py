"""Decoder inputs and loss labels of Whisper training (Radford et al. 2022, §2.3 and Fig. 1).

An utterance in language L for task T becomes the token sequence

    <|startoftranscript|> <|L|> <|T|> <|notimestamps|> t_1 ... t_n <|endoftext|>

where t_1..t_n encode " " + reference (Whisper's own outputs start with a space-prefixed
token, so the fine-tuned model keeps the base's tokenisation of the first word). The decoder
reads every token but the last; the label at each position is the next token. The three
positions that would predict the prompt tokens <|L|>, <|T|>, <|notimestamps|> are masked
(label -100): the prompt is given, not learnt, so the loss covers the text and
<|endoftext|>. Padding extends inputs with <|endoftext|> and labels with -100, so it never
counts; the decoder is causal, so padding after a sequence cannot change its earlier logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from speechmerge.data.manifest import Utterance
from speechmerge.errors import SpeechmergeError

IGNORE = -100  # the label that torch's cross-entropy skips


@dataclass(frozen=True)
class TargetSequence:
    """One utterance's decoder input ids and labels (equal lengths)."""

    inputs: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def tokens(self) -> int:
        """Positions that count in the loss."""
        return sum(label != IGNORE for label in self.labels)


@dataclass(frozen=True)
class PromptTokens:
    """The special token ids of a Whisper vocabulary that training prompts need."""

    start: int
    end: int
    no_timestamps: int
    languages: dict[str, int]
    tasks: dict[str, int]

    @classmethod
    def of(cls, tokenizer) -> PromptTokens:
        from speechmerge.data.manifest import whisper_languages

        vocab = tokenizer.get_vocab()
        languages = {code: vocab[f"<|{code}|>"] for code in whisper_languages() if f"<|{code}|>" in vocab}
        tasks = {task: vocab[f"<|{task}|>"] for task in ("transcribe", "translate") if f"<|{task}|>" in vocab}
        return cls(vocab["<|startoftranscript|>"], vocab["<|endoftext|>"], vocab["<|notimestamps|>"], languages, tasks)

    def prompt(self, language: str, task: str) -> list[int]:
        return [self.start, self.languages[language], self.tasks[task], self.no_timestamps]


def check_vocabulary(prompts: PromptTokens, pairs: set[tuple[str, str]], model: str) -> None:
    """Refuse (language, task) pairs whose prompt tokens the model's vocabulary lacks."""
    languages = sorted({language for language, _ in pairs if language not in prompts.languages})
    if languages:
        known = ", ".join(sorted(prompts.languages)) or "none: it is an English-only model"
        raise SpeechmergeError(
            f"{model}: has no language token for {', '.join(languages)} (it knows {known}); use a multilingual base or leave these languages out"
        )
    tasks = sorted({task for _, task in pairs if task not in prompts.tasks})
    if tasks:
        raise SpeechmergeError(
            f"{model}: has no <|{tasks[0]}|> token, so it cannot learn {', '.join(tasks)}; use a multilingual base or --task transcribe"
        )


def target_sequence(tokenizer, prompts: PromptTokens, utterance: Utterance, max_length: int) -> TargetSequence:
    """The decoder inputs and labels of one utterance (see the module docstring)."""
    text = tokenizer.encode(" " + utterance.reference.strip(), add_special_tokens=False)
    prompt = prompts.prompt(utterance.language, utterance.task)
    inputs = prompt + text
    if len(inputs) > max_length:
        raise SpeechmergeError(
            f"utterance {utterance.id!r} ({utterance.audio}): its reference is {len(text)} tokens, but the decoder holds "
            f"{max_length} with the {len(prompt)}-token prompt; shorten or split it"
        )
    labels = [IGNORE] * (len(prompt) - 1) + text + [prompts.end]
    return TargetSequence(tuple(inputs), tuple(labels))


def pad_targets(sequences: list[TargetSequence], pad_id: int):
    """(decoder_input_ids, labels) tensors of a batch, right-padded to its longest sequence."""
    import torch

    width = max(len(sequence.inputs) for sequence in sequences)
    inputs = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        inputs[row, : len(sequence.inputs)] = torch.tensor(sequence.inputs)
        labels[row, : len(sequence.labels)] = torch.tensor(sequence.labels)
    return inputs, labels
