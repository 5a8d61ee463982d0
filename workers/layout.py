"""How a worker host is laid out: processes, and threads per process, for the device it has.

Where a query's time goes decides it. On the CPU every stage is host work, so one process per
core, each with one torch thread (several 1-thread processes beat one process with many threads:
BENCHMARKS.md). On a GPU host the models take a few milliseconds of a query and the rest
(retrieval bookkeeping, MAGSAC, placement, the job's database work) is host work too
(BENCHMARKS.md section 8: 8 ms of 0.44 s on an H200), so one process cannot keep the GPU
busy: the host is laid out as a CPU host, one process per core, every process with its own
CUDA context made after the fork (workers/runtime.py loads models on the first task) sharing
the GPU, up to ``GPU_PROCESSES_MAX`` (each process holds a context, its models and the map's
resident descriptors in GPU memory). Cores a process has to itself verify its pairs on threads
(core.verify.verify_many).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GPU_PROCESSES_MAX = 16


@dataclass(frozen=True)
class Layout:
    processes: int
    torch_threads: int  # 0: torch's default
    verify_threads: int


def cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_layout(
    device: str,
    processes: int | None = None,
    torch_threads: int = 0,
    verify_threads: int = 0,
    host_cores: int | None = None,
) -> Layout:
    """The layout of a ``featureloc worker`` on ``device``; explicit settings (non-zero) win."""
    n_cores = host_cores or cores()
    if processes is None:
        processes = min(n_cores, GPU_PROCESSES_MAX) if device == "cuda" else n_cores
    processes = max(processes, 1)
    if not torch_threads and processes > 1:
        torch_threads = 1
    own = max(n_cores // processes, 1)  # the cores each process has to itself
    return Layout(processes, torch_threads, verify_threads or own)
