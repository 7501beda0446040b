"""Facts about this process and host, read from /proc and the OS: memory in use, cores, hardware."""

from __future__ import annotations

import os
import platform
import resource


def _proc_field(path: str, field: str) -> int:
    """A `field: N kB` line of a /proc file, in bytes (0 where the file or field is missing)."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def anonymous_memory_bytes() -> int:
    """This process's resident anonymous memory (RssAnon), excluding memory-mapped files."""
    return _proc_field("/proc/self/status", "RssAnon")


def available_memory_bytes() -> int:
    """The memory the kernel can give new work without swapping (MemAvailable)."""
    return _proc_field("/proc/meminfo", "MemAvailable")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (includes memory-mapped input pages)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask), not all the host's cores."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def hardware() -> str:
    """CPU model, cores, memory and GPU, in one line."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name()
    except ImportError:
        pass
    return f"{model}, {cpu_count()} cores, {memory:.0f} GiB RAM, {gpu}"
