"""Plug-ins by name (core/registry.py)."""

from __future__ import annotations

import pytest

from core import registry
from core.errors import InputError
from core.features.base import Extractor
from core.matching.base import Matcher
from core.retrieval.base import Retriever


@pytest.mark.parametrize(
    ("table", "lookup", "base"),
    [
        (registry.EXTRACTORS, registry.extractor_class, Extractor),
        (registry.MATCHERS, registry.matcher_class, Matcher),
        (registry.RETRIEVERS, registry.retriever_class, Retriever),
    ],
)
def test_every_name_resolves_to_its_kind_of_plug_in(table, lookup, base):
    for name in table:
        assert issubclass(lookup(name), base), name


def test_an_unknown_name_lists_the_available_ones():
    with pytest.raises(InputError, match=r"unknown matcher 'glue'; available: .*lightglue.*mnn"):
        registry.matcher_class("glue")
    with pytest.raises(InputError, match="unknown extractor"):
        registry.create_extractor("orb")


def test_a_bad_option_is_an_input_error():
    with pytest.raises(InputError, match="nope"):
        registry.create_extractor("sift", {"nope": 1})
    with pytest.raises(InputError, match="nope"):
        registry.create_matcher("mnn", {"nope": 1})


def test_created_plug_ins_carry_their_merged_options():
    sift = registry.create_extractor("sift", {"max_keypoints": 123})
    assert sift.conf["max_keypoints"] == 123 and sift.device == "cpu"
    assert registry.create_matcher("mnn").accepts("sift")


def test_every_extractor_has_a_fine_matcher_that_accepts_it() -> None:
    """One home for "which matcher a fine feature set takes" (core.defaults.fine_matcher): an
    XFeat fine set used to fail a job as "internal error: KeyError"."""
    from core.defaults import fine_matcher

    for extractor in registry.EXTRACTORS:
        matcher = fine_matcher(extractor)
        compatible = registry.matcher_class(matcher).compatible_extractors
        assert compatible is None or extractor in compatible, (extractor, matcher)
    assert fine_matcher("aliked") == "lightglue" and fine_matcher("xfeat") == "lighterglue"
