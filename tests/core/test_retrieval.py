"""VLAD retrieval on real images: Getty photos when present, else the repo's synthetic world."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest

from core import registry
from core.errors import MapError
from core.localiser import Localiser
from core.mapbuild import RefEntry, build_map, finalise_map, read_positions_csv
from core.mapstore import MapStore, Reference, write_part
from core.retrieval.vlad import STATE_FILE, VladRetriever
from tests.support.memory import mapped_kib
from tests.support.paths import GETTY, getty_present

# Builds and searches a VLAD map of 40 photos: tens of seconds on 2 cores.
pytestmark = pytest.mark.integration

# The default extractor of maps when available (fast, and what VLAD is tuned for), else SIFT.
EXTRACTOR = "xfeat" if "xfeat" in registry.EXTRACTORS else "sift"
CONF = {"num_clusters": 32, "train_per_image": 64}  # small map: a small codebook


def _getty_entries() -> list[RefEntry]:
    """All views of 8 random reference positions (40 photos)."""
    entries = read_positions_csv(GETTY / "references.csv", GETTY / "images")
    positions = sorted({(e.reference.x, e.reference.y) for e in entries})
    rng = np.random.default_rng(0)
    keep = {positions[i] for i in rng.choice(len(positions), 8, replace=False)}
    return [e for e in entries if (e.reference.x, e.reference.y) in keep]


def _synthetic_entries(tmp: Path) -> list[RefEntry]:
    synthetic = pytest.importorskip("cli.synthetic")
    data = synthetic.generate_dataset(tmp / "synthetic", grid=(4, 3), views_per_position=4)
    return read_positions_csv(data.references_csv, data.images_dir)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retrieval")
    if getty_present():
        return tmp, _getty_entries()
    return tmp, _synthetic_entries(tmp)


@pytest.fixture(scope="module")
def built(dataset):
    tmp, entries = dataset
    store = MapStore(tmp / "maps")
    build_map(store, "m", entries, EXTRACTOR, retriever_name="vlad", retriever_conf=CONF)
    return store, store.open("m")


@functools.cache
def extractor():
    return registry.create_extractor(EXTRACTOR)


def _perturbed(path: Path):
    """The same view, cropped, rescaled and darker: what another photo from the spot looks like."""
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    crop = img[h // 12 : h - h // 12, w // 10 : w - w // 20]
    return cv2.convertScaleAbs(cv2.resize(crop, (w, h)), alpha=0.8, beta=10)


def test_a_view_of_the_same_place_ranks_first(built, dataset):
    store, ref_map = built
    _, entries = dataset
    retriever = VladRetriever(CONF)
    retriever.prepare(ref_map)
    ext = extractor()
    hits = 0
    for entry in entries[::7]:
        order, scores = retriever.shortlist(ext.extract(_perturbed(entry.image)), ref_map, 5)
        assert len(order) == 5 and np.all(np.diff(scores) <= 0)
        hits += ref_map.ids[order[0]] == entry.reference.id
    assert hits >= 0.8 * len(entries[::7])


def test_fit_prepare_round_trip(built):
    store, ref_map = built
    assert (ref_map.retrieval_dir / STATE_FILE).is_file()
    fitted = VladRetriever(CONF)
    fitted.fit(ref_map)  # existing codebook: reused, descriptors recomputed identically
    loaded = VladRetriever(CONF)
    loaded.prepare(store.open("m"))
    np.testing.assert_array_equal(fitted.centroids, loaded.centroids)
    rows = np.arange(len(ref_map))
    np.testing.assert_allclose(
        fitted.descriptor_rows(rows), loaded.descriptor_rows(rows), atol=1e-3
    )
    q = ref_map.features[3]
    np.testing.assert_allclose(
        fitted.scores(q, ref_map), loaded.scores(q, ref_map), rtol=1e-3, atol=1e-3
    )
    assert loaded.shortlist(q, ref_map, 1)[0][0] == 3  # a reference finds itself


def _copy_map(built, ids: list[str], store: MapStore, name: str, conf: dict) -> None:
    """A map holding ``ids`` of the built map, reusing its features (no re-extraction)."""
    _, ref_map = built
    store.create(name, ref_map.extractor, {"name": "vlad", "conf": conf})
    _add(built, ids, store, name)
    finalise_map(store, name)


def _add(built, ids: list[str], store: MapStore, name: str) -> None:
    _, ref_map = built
    items = []
    for rid in ids:
        i = ref_map.index[rid]
        x, y = ref_map.positions[i]
        items.append((Reference(rid, float(x), float(y)), ref_map.features[i]))
    write_part(store.path(name), items)


def test_adding_references_after_fit_keeps_the_codebook(built, dataset, tmp_path):
    _, ref_map = built
    _, entries = dataset
    first, later = ref_map.ids[:-10], ref_map.ids[-10:]
    store = MapStore(tmp_path / "maps")
    _copy_map(built, first, store, "grow", CONF)
    before = VladRetriever(CONF)
    before.prepare(store.open("grow"))

    _add(built, later, store, "grow")
    with pytest.raises(MapError, match="finalise"):
        VladRetriever(CONF).prepare(store.open("grow"))  # new photos, not yet described
    finalise_map(store, "grow")

    grown = store.open("grow")
    after = VladRetriever(CONF)
    after.prepare(grown)
    assert len(after.map_to_row) == len(ref_map)
    np.testing.assert_array_equal(before.centroids, after.centroids)
    new_entry = next(e for e in entries if e.reference.id == later[0])
    order, _ = after.shortlist(extractor().extract(_perturbed(new_entry.image)), grown, 3)
    assert grown.index[later[0]] in order


def test_codebook_is_refitted_when_the_map_outgrows_it(built, tmp_path):
    _, ref_map = built
    store = MapStore(tmp_path / "maps")
    conf = {**CONF, "refit_growth": 1.5}
    _copy_map(built, ref_map.ids[:15], store, "g", conf)
    small = VladRetriever(conf)
    small.prepare(store.open("g"))
    _add(built, ref_map.ids[15:30], store, "g")
    finalise_map(store, "g")  # 30 > 1.5 * 15: a new codebook over all references
    big = VladRetriever(conf)
    big.prepare(store.open("g"))
    assert not np.array_equal(small.centroids, big.centroids)


def test_a_big_map_shortlists_through_the_index_and_extensions_are_added(built, tmp_path):
    """index_min_references lowered to the test map's size: the compressed index serves the
    shortlist, re-ranked exactly (rerank covers the map, so the order equals exact search)."""
    _, ref_map = built
    store = MapStore(tmp_path / "maps")
    n = len(ref_map)
    conf = {**CONF, "index_min_references": 10, "index": {"dim": 16, "m": 4, "rerank": n}}
    _copy_map(built, ref_map.ids[:-5], store, "idx", conf)
    _add(built, ref_map.ids[-5:], store, "idx")
    finalise_map(store, "idx")  # extension: the new references join the existing index
    grown = store.open("idx")
    indexed = VladRetriever(conf)
    indexed.prepare(grown)
    assert indexed.index is not None and len(indexed.index) == n
    exact = VladRetriever({**conf, "index_min_references": 0})
    exact.fit(grown)
    assert exact.index is None
    for i in range(0, n, 5):
        q = grown.features[i]
        a, sa = indexed.shortlist(q, grown, 5)
        b, sb = exact.shortlist(q, grown, 5)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(sa, sb, rtol=1e-5)
        assert a[0] == i


def test_a_job_leaves_none_of_the_maps_pages_in_the_worker(built, dataset):
    """After a localisation the features and descriptors it read are unmapped from the
    process (the page cache keeps them): a worker's memory does not grow with the map."""
    _, entries = dataset
    _, ref_map = built
    loc = Localiser(ref_map)
    res = loc.localise(_perturbed(entries[3].image))
    assert res.candidates  # the job did read references' features and descriptors
    assert mapped_kib(ref_map.path) < 64  # headers and id arrays at most
