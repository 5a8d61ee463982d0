"""Where checkpoints featureloc may not ship (SuperPoint, SuperGlue) come from when a plug-in's
``weights`` option names none: a lookup the service registers from its own settings
(workers/settings.py). Core reads no settings itself, and this module imports no torch, so the
settings can register without loading it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

# ``lookup(setting)`` -> (the path the service's settings give, or None; how a user sets it).
WeightsLookup = Callable[[str], tuple[str | os.PathLike | None, str]]
_lookup: WeightsLookup | None = None


def use_weights_from(lookup: WeightsLookup | None) -> None:
    """Register (None: forget) where ``settings_path`` finds a checkpoint's path."""
    global _lookup
    _lookup = lookup


def settings_path(setting: str) -> tuple[str | os.PathLike | None, str]:
    """The path the registered lookup gives for ``setting`` (None: none, or no lookup) and how a
    user sets it ("" without a lookup)."""
    return _lookup(setting) if _lookup is not None else (None, "")
