"""Plug-ins by name. Modules are imported on first use, so SIFT never pays for torch models."""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import InputError
from core.features.base import Extractor
from core.matching.base import Matcher
from core.retrieval.base import Retriever

EXTRACTORS: dict[str, str] = {
    "sift": "core.features.sift:SiftExtractor",
    "xfeat": "core.features.xfeat:XFeatExtractor",
    "aliked": "core.features.aliked:AlikedExtractor",
    "disk": "core.features.disk:DiskExtractor",
    "superpoint": "core.features.superpoint:SuperPointExtractor",
}
MATCHERS: dict[str, str] = {
    "mnn": "core.matching.mnn:MutualNearestNeighbour",
    "lighterglue": "core.matching.lightglue:LighterGlueMatcher",
    "lightglue": "core.matching.lightglue:LightGlueMatcher",
    "superglue": "core.matching.superglue:SuperGlueMatcher",
}
RETRIEVERS: dict[str, str] = {
    "exhaustive": "core.retrieval.exhaustive:ExhaustiveRetriever",
    "vlad": "core.retrieval.vlad:VladRetriever",
}


def _load(table: dict[str, str], kind: str, name: str) -> type:
    try:
        target = table[name]
    except KeyError:
        raise InputError(
            f"unknown {kind} {name!r}; available: {', '.join(sorted(table))}"
        ) from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def extractor_class(name: str) -> type[Extractor]:
    return _load(EXTRACTORS, "extractor", name)


def matcher_class(name: str) -> type[Matcher]:
    return _load(MATCHERS, "matcher", name)


def retriever_class(name: str) -> type[Retriever]:
    return _load(RETRIEVERS, "retriever", name)


def create_extractor(
    name: str, conf: dict[str, Any] | None = None, device: str = "cpu"
) -> Extractor:
    try:
        return extractor_class(name)(conf, device=device)
    except InputError:
        raise  # already says what is wrong (e.g. WeightsError)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def create_matcher(name: str, conf: dict[str, Any] | None = None, device: str = "cpu") -> Matcher:
    try:
        return matcher_class(name)(conf, device=device)
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def extractor_identity(name: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a map built with this extractor records, checked without loading its model (a
    build's sender validates with this before any chunk runs)."""
    return {
        "name": name,
        "conf": extractor_class(name).Conf.make(conf, f"extractor {name!r}").model_dump(),
    }
