"""Where the repository and the Getty photos are: the one place tests and benchmarks read them.

The Getty set is never copied into the repo; ``FEATURELOC_GETTY_DIR`` points at it, by default
``../shared/getty`` next to the checkout. Tests that need it skip cleanly when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GETTY = Path(os.environ.get("FEATURELOC_GETTY_DIR", REPO.parent / "shared" / "getty"))


def getty_present() -> bool:
    """True when the Getty set is complete enough to use (its reference and query lists)."""
    return (GETTY / "references.csv").is_file() and (GETTY / "queries.csv").is_file()
