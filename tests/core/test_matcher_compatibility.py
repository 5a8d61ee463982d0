"""An incompatible matcher is refused as incompatible, before any weights are looked for."""

from __future__ import annotations

import pytest

from cli.synthetic import generate_dataset
from core.errors import MapError
from core.localiser import LocaliseOptions, Localiser
from core.mapbuild import build_map, read_positions_csv
from core.mapstore import MapStore
from core.weights import WeightsError


@pytest.fixture(scope="module")
def sift_map(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compat")
    generate_dataset(tmp / "s", seed=1, grid=(1, 2), views_per_position=1, size=(96, 72))
    store = MapStore(tmp / "maps")
    entries = read_positions_csv(tmp / "s" / "references.csv", tmp / "s" / "images")
    build_map(store, "tiny", entries, extractor_name="sift", retriever_name="exhaustive")
    return store.open("tiny")


def test_superglue_on_a_sift_map_is_incompatible_not_missing_weights(sift_map, monkeypatch):
    monkeypatch.delenv("FEATURELOC_SUPERGLUE_WEIGHTS", raising=False)
    monkeypatch.delenv("FEATURELOC_SUPERPOINT_WEIGHTS", raising=False)
    loc = Localiser(sift_map)
    opts = LocaliseOptions.parse({"matcher": "superglue"})
    with pytest.raises(MapError, match="matcher 'superglue' cannot match 'sift' features") as e:
        loc.matcher(opts.matcher, opts.effective_matcher_conf("sift"))
    assert not isinstance(e.value, WeightsError)
