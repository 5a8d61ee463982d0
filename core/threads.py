"""How many threads torch's and OpenCV's pools run: one rule for every process that runs models
(workers/runtime.py, the CLI's in-process commands through cli/common.py)."""

from __future__ import annotations


def limit_threads(count: int) -> None:
    """Run torch's and OpenCV's thread pools with ``count`` threads; 0 leaves their defaults.

    Where several processes share few cores (a worker's pool, a build beside workers), pools of
    one thread each keep them from spin-waiting in each other's way."""
    if count <= 0:
        return
    import cv2
    import torch

    torch.set_num_threads(count)
    cv2.setNumThreads(count)
