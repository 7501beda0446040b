"""Exactness of the built-in whisper-base conversion against the `ctranslate2` package.

Speaks sentences with espeak-ng, decodes each clip greedily with the converted Hugging Face
model and with ctranslate2 on the original package files, and prints how many token
sequences and detected languages agree, the largest encoder-output difference, and the
median conversion and decode times.

    .venv/bin/python benchmarks/formats_exactness.py [--clips 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SENTENCES = [
    ("en", "The weather is nice today and the children are playing in the park."),
    ("en", "Please send the report to the office before Friday."),
    ("es", "El perro come carne en la cocina."),
    ("es", "Mañana vamos a visitar a mis abuelos en el campo."),
    ("de", "Ich trinke jeden Morgen eine Tasse Kaffee."),
    ("de", "Der Zug nach Berlin fährt um acht Uhr ab."),
    ("fr", "Nous avons mangé une soupe de légumes hier soir."),
    ("fr", "La bibliothèque ferme à dix-huit heures."),
    ("it", "Il treno per Roma parte alle nove."),
    ("pt", "O gato dorme no sofá da sala."),
    ("nl", "Het regent vandaag in Amsterdam."),
    ("ca", "El mercat obre cada dia a les vuit."),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=len(SENTENCES))
    parser.add_argument("--repeats", type=int, default=3, help="conversions to time (median reported)")
    args = parser.parse_args()

    import ctranslate2
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from speechmerge.checkpoints.builtin import builtin_files
    from speechmerge.checkpoints.ct2 import convert_ct2
    from speechmerge.data.audio import load_audio

    work = Path(tempfile.mkdtemp())
    files = builtin_files("whisper-base")
    seconds = []
    for index in range(args.repeats):
        start = time.perf_counter()
        convert_ct2(files, work / f"hf{index}")
        seconds.append(time.perf_counter() - start)
    model_dir = work / "hf0"
    package = work / "package"
    package.mkdir()
    with open(package / "model.bin", "wb") as out:
        for part in files.parts:
            out.write(part.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(files.folder / name, package / name)

    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    reference = ctranslate2.models.Whisper(str(package), device="cpu", compute_type="float32")
    same_tokens = same_language = 0
    worst = 0.0
    hf_times, ct2_times = [], []
    for index, (language, text) in enumerate(SENTENCES[: args.clips]):
        wav = work / f"{index}.wav"
        subprocess.run(["espeak-ng", "-v", language, "-w", str(wav), text], check=True)
        features = extractor(load_audio(wav), sampling_rate=16000, return_tensors="pt").input_features
        view = ctranslate2.StorageView.from_array(features.numpy())
        lang_id = model.generation_config.lang_to_id[f"<|{language}|>"]
        start = time.perf_counter()
        theirs = reference.generate(view, [[50258, lang_id, 50359, 50363]], beam_size=1)[0].sequences_ids[0]
        ct2_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            ours = (
                model.generate(features, language=language, task="transcribe", return_dict_in_generate=True)
                .sequences[0]
                .tolist()
            )
        hf_times.append(time.perf_counter() - start)
        same_tokens += [t for t in ours[4:] if t != 50257] == theirs
        with torch.no_grad():
            detected = model.detect_language(features).item()
            encoding = model.model.encoder(features).last_hidden_state.numpy()
        same_language += detected == model.generation_config.lang_to_id[reference.detect_language(view)[0][0][0]]
        worst = max(worst, float(np.abs(encoding - np.array(reference.encode(view, to_cpu=True))).max()))
    clips = min(args.clips, len(SENTENCES))
    print(
        f"clips: {clips}; token-identical greedy outputs: {same_tokens}/{clips}; same detected language: {same_language}/{clips}"
    )
    print(f"encoder outputs: max abs diff {worst:.2e}")
    print(
        f"conversion (builtin:whisper-base -> HF float32): median {statistics.median(seconds):.1f} s over {args.repeats}"
    )
    print(
        f"greedy decode per clip: HF median {statistics.median(hf_times):.2f} s, ctranslate2 median {statistics.median(ct2_times):.2f} s"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
