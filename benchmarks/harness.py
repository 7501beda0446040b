"""What the benchmark scripts share: measured child processes, random Whisper-shaped
checkpoints, and rewriting their own section of a Markdown file.

A measured child prints `ready` once its imports are done, waits for a line on stdin, works,
and prints a JSON line last. Meanwhile this process samples the child's /proc status every
2 ms: the peak resident anonymous memory (RssAnon: allocations, not memory-mapped files)
above the child's baseline at `ready`, and the peak total resident set (VmRSS, which also
counts the pages of memory-mapped inputs, reclaimable by the kernel).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WHISPER_SHAPES = {
    "small": dict(
        d_model=768,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        vocab_size=51865,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
    ),
    "large-v3": dict(
        d_model=1280,
        encoder_layers=32,
        decoder_layers=32,
        encoder_attention_heads=20,
        decoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_ffn_dim=5120,
        vocab_size=51866,
        num_mel_bins=128,
        max_source_positions=1500,
        max_target_positions=448,
    ),
}


def proc_status(pid: int) -> dict[str, int]:
    """RssAnon and VmRSS of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = line.split(":", 1)[0]
            if key in ("RssAnon", "VmRSS"):
                values[key] = int(line.split()[1]) * 1024
    return values


def run_child(command: list[str], cwd: Path = ROOT) -> dict:
    """Run a measured child (see the module docstring); return its JSON plus `peak_anon_bytes`
    (above its baseline), `peak_rss_bytes` (absolute) and `wall_seconds` from 'go' to exit."""
    child = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
    )
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError(f"child failed to start: {' '.join(command)}\n{child.stderr.read()[-2000:]}")
    baseline = proc_status(child.pid).get("RssAnon", 0)
    peak_anon, peak_rss = baseline, 0
    child.stdin.write("go\n")
    child.stdin.flush()
    start = time.perf_counter()
    while child.poll() is None:
        try:
            status = proc_status(child.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        peak_anon = max(peak_anon, status.get("RssAnon", 0))
        peak_rss = max(peak_rss, status.get("VmRSS", 0))
        time.sleep(0.002)
    wall = time.perf_counter() - start
    output, errors = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"child failed: {' '.join(command)}\n{errors[-3000:]}")
    lines = [line for line in output.strip().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    result.update(peak_anon_bytes=peak_anon - baseline, peak_rss_bytes=peak_rss, wall_seconds=wall)
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def section_markers(script: str, section: str) -> tuple[str, str]:
    return f"<!-- {script} {section}: begin -->", f"<!-- {script} {section}: end -->"


def write_section(path: Path, script: str, name: str, body: str) -> None:
    """Replace this script's named section of a Markdown file (append it the first time)."""
    begin, end = section_markers(script, name)
    section = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Performance\n\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section.rstrip("\n") + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def machine_description() -> str:
    """CPU model and count, memory, as this machine reports them."""
    import os

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} × {model}, {memory:.0f} GiB RAM"
