"""This process's memory as the kernel reports it (Linux /proc), for memory tests."""

from __future__ import annotations

from pathlib import Path


def mapped_kib(directory: Path) -> int:
    """Resident KiB of this process's mappings of files under ``directory`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5:  # a mapping's header line
            inside = len(head) >= 6 and head[5].startswith(str(directory))
        elif inside and head[0] == "Rss:":
            total += int(head[1])
    return total
