"""Where the torch decoder's time goes, against the CPU's own limits (issue 16).

On the built-in whisper-base and random encoder outputs (the costs do not depend on the values):

1. memory bandwidth: the sum of a 512 MB float32 tensor (the read floor of a memory-bound step);
2. cross-attention keys and values of a batch (`GreedyDecoder.cross_keys_values`, 12 projections
   of batch x 1500 positions): seconds and G float32 operations a second;
3. one decoding step (`GreedyDecoder._forward` on one token per row) at each of `--batch-sizes`,
   milliseconds per step and per clip-step, with precomputed keys and values and attending over
   the encoder output E (`attend_encoder`);
4. the output projection (51,865 x 512) of one step at batch 8 as `linear` (h Wᵀ) and as W hᵀ;
5. attending over E at the largest batch: the two products of one layer (scores q Eᵀ, mix p E:
   `torch.bmm`, as the decoder computes them) against reading E twice at the measured bandwidth.

    python benchmarks/profile_decoder.py --threads 2

Medians of `--repeats` timings each; prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

MAC_PER_CLIP = 2 * 6 * 1500 * 512 * 512  # cross-attention K and V of whisper-base, per clip


def timed(function, repeats: int) -> float:
    function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    args = parser.parse_args()

    import torch

    from speechmerge.evaluation.greedy import GreedyDecoder
    from speechmerge.evaluation.hf_backend import load_whisper
    from speechmerge.evaluation.model import open_eval_model

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    model = load_whisper(open_eval_model("builtin:whisper-base").directory)
    decoder = GreedyDecoder(model)
    rows = []
    block = torch.randn(128 * 1024 * 1024)
    seconds = timed(block.sum, 5)
    bandwidth = block.numel() * 4 / seconds
    rows.append(("memory bandwidth (sum of 512 MB)", f"{bandwidth / 1e9:.1f} GB/s"))
    del block
    with torch.no_grad():
        encoded = torch.randn(8, 1500, 512)
        seconds = timed(lambda: decoder.cross_keys_values(encoded), max(3, args.repeats // 2))
        rows.append(
            (
                "cross-attention K/V, batch 8",
                f"{seconds:.3f} s = {1000 * seconds / 8:.0f} ms/clip, {2 * 8 * MAC_PER_CLIP / seconds / 1e9:.0f} GFLOP/s",
            )
        )
        for batch in args.batch_sizes:
            encoded = torch.randn(batch, 1500, 512)
            for attend, label in ((False, "keys and values"), (True, "attending over E")):
                decoder.attend_encoder = attend
                cross = decoder.cross_keys_values(encoded)
                cache = decoder._empty_cache(batch, 4 + args.repeats + 2, cross[0][0])
                decoder._forward(torch.full((batch, 4), 50258), 0, cross, cache)
                positions = iter(range(4, 4 + args.repeats + 2))

                def step_once(batch=batch, positions=positions, cross=cross, cache=cache):
                    decoder._forward(torch.full((batch, 1), 220), next(positions), cross, cache)

                step = timed(step_once, args.repeats)
                rows.append(
                    (
                        f"one step, batch {batch}, {label}",
                        f"{1000 * step:.1f} ms = {1000 * step / batch:.2f} ms/clip-step",
                    )
                )
            decoder.attend_encoder = False
        batch = max(args.batch_sizes)
        encoded = torch.randn(batch, 1500, 512)
        encoded_t = encoded.transpose(1, 2).contiguous()
        queries = torch.randn(batch, 8, 512)
        scores = torch.bmm(queries, encoded_t).softmax(-1)
        score_time = timed(lambda: torch.bmm(queries, encoded_t), args.repeats)
        mix_time = timed(lambda: torch.bmm(scores, encoded), args.repeats)
        read_floor = 2 * encoded.numel() * 4 / bandwidth
        rows.append(
            (
                f"attending over E, batch {batch}, one layer: q Eᵀ + p E",
                f"{1000 * score_time:.1f} + {1000 * mix_time:.1f} ms (reading E twice: {1000 * read_floor:.1f} ms)",
            )
        )
        hidden = torch.randn(8, 512)
        weight = model.proj_out.weight
        linear = timed(lambda: torch.nn.functional.linear(hidden, weight), args.repeats)
        columns = timed(lambda: torch.mm(weight, hidden.T), args.repeats)
        floor = weight.numel() * 4 / 1e6
        rows.append(("output projection, batch 8: linear (h Wᵀ)", f"{1000 * linear:.1f} ms ({floor:.0f} MB read)"))
        rows.append(("output projection, batch 8: W hᵀ", f"{1000 * columns:.1f} ms"))
    print(f"{args.threads} threads, load average {load:.1f} before, medians of {args.repeats}\n")
    print("| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
