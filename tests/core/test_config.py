"""One configuration mechanism (core/config.py): strict typed confs, presets, job options."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core import registry
from core.config import Conf
from core.defaults import DEFAULT, DEFAULT_PRESET, PRESETS, preset_for
from core.errors import InputError
from core.estimation import ESTIMATORS, ClusterConf, cluster_candidates
from core.localiser import LocaliseOptions
from core.placement import PlacementConfig
from core.verify import VerifyConfig
from core.weights import WeightsError, resolve_user_weights
from workers.settings import Settings

PLUGINS = {
    "extractor": (registry.EXTRACTORS, registry.extractor_class),
    "matcher": (registry.MATCHERS, registry.matcher_class),
    "retriever": (registry.RETRIEVERS, registry.retriever_class),
}
ALL_CONFS = [
    *(
        pytest.param(load(name).Conf, id=f"{kind}-{name}")
        for kind, (table, load) in PLUGINS.items()
        for name in table
    ),
    *(pytest.param(e.Conf, id=f"estimator-{name}") for name, e in ESTIMATORS.items()),
    pytest.param(VerifyConfig, id="verify"),
    pytest.param(PlacementConfig, id="placement"),
]


@pytest.mark.parametrize("conf_class", ALL_CONFS)
def test_every_conf_refuses_unknown_keys_naming_them_and_the_allowed_ones(conf_class):
    assert issubclass(conf_class, Conf)
    with pytest.raises(InputError) as err:
        conf_class.make({"no_such_option": 1}, "the thing")
    message = str(err.value)
    assert "no_such_option" in message and "the thing" in message
    allowed = message.split("allowed: ")[1]
    assert allowed == (", ".join(conf_class.model_fields) or "none")


@pytest.mark.parametrize("conf_class", ALL_CONFS)
def test_every_conf_is_read_only_and_a_mapping_of_its_fields(conf_class):
    conf = conf_class.make()
    first = next(iter(conf_class.model_fields), None)
    if first is not None:
        with pytest.raises(ValidationError):
            setattr(conf, first, conf[first])
    assert dict(conf) == conf.model_dump() == {**conf}


def test_a_misspelt_estimator_option_fails_when_the_job_is_parsed():
    with pytest.raises(InputError) as err:
        LocaliseOptions.parse({"estimator_conf": {"radiuss": 1}})
    message = str(err.value)
    assert "radiuss" in message and "allowed: radius, inlier_floor" in message
    for estimator, name in [("best", "min_inliers"), ("most_matches", "confidence_scale")]:
        with pytest.raises(InputError, match=f"{name}s.*allowed: .*{name}"):
            LocaliseOptions.parse({"estimator": estimator, "estimator_conf": {f"{name}s": 1}})
    with pytest.raises(InputError, match="radiuss"):
        cluster_candidates([], {"radiuss": 1})  # the functions themselves are strict too


@pytest.mark.parametrize(
    "options, key",
    [
        ({"matcher_conf": {"min_similarty": 0.9}}, "min_similarty"),
        ({"matcher": "lightglue", "matcher_conf": {"filter": 0.2}}, "filter"),
        ({"matcher": "nope"}, "nope"),
        ({"placement_conf": {"max_pairz": 3}}, "max_pairz"),
        ({"verify_method": "lmeds"}, "verify_method"),
        ({"verify_threshold_px": 0}, "verify_threshold_px"),
        ({"estimator_conf": {"radius": "far"}}, "radius"),
    ],
)
def test_job_options_are_fully_validated_at_parse_time(options, key):
    with pytest.raises(InputError, match=key):
        LocaliseOptions.parse(options)


def test_plugins_refuse_unknown_and_bad_options_when_created():
    with pytest.raises(InputError, match="contrast.*allowed: max_keypoints"):
        registry.create_extractor("sift", {"contrast": 0.1})
    with pytest.raises(InputError, match="max_keypoints"):
        registry.create_extractor("sift", {"max_keypoints": 0})
    with pytest.raises(InputError, match="ratio"):
        registry.create_matcher("mnn", {"ratio": "high"})
    with pytest.raises(InputError, match="num_cluster"):
        registry.retriever_class("vlad")({"num_cluster": 8})


def test_the_default_preset_has_the_measured_numbers():
    """The values the defaults had before presets (core/defaults.py at 79c77e5)."""
    assert DEFAULT_PRESET == "xfeat+mnn" and PRESETS[DEFAULT_PRESET] is DEFAULT
    assert (DEFAULT.extractor, DEFAULT.retriever, DEFAULT.matcher) == ("xfeat", "vlad", "mnn")
    xfeat = registry.extractor_class("xfeat").Conf.make(DEFAULT.extractor_conf)
    assert (xfeat.max_keypoints, xfeat.resize_max, xfeat.detection_threshold) == (1024, None, 0.05)
    vlad = registry.retriever_class("vlad").Conf.make(DEFAULT.retriever_conf)
    assert (vlad.num_clusters, vlad.multi_assign) == (256, 1)
    opts = LocaliseOptions()
    assert opts.top_k == 50 and opts.matcher == "mnn" and opts.estimator == "cluster"
    assert opts.effective_matcher_conf("xfeat") == {"min_similarity": 0.82}
    assert opts.effective_matcher_conf("sift") == {}  # other maps: the matcher's own defaults
    mnn = registry.matcher_class("mnn").Conf.make(opts.effective_matcher_conf("xfeat"))
    assert (mnn.ratio, mnn.min_similarity) == (0.9, 0.82)
    assert opts.verify_config() == VerifyConfig() == DEFAULT.verify
    assert (VerifyConfig().model, VerifyConfig().method, VerifyConfig().threshold_px) == (
        "fundamental",
        "magsac",
        2.0,
    )
    cluster = opts.estimator_config()
    assert cluster == ClusterConf()
    assert cluster.model_dump() == {
        "radius": 9.0,
        "inlier_floor": 20.0,
        "weight_power": 2.0,
        "min_evidence": 10.0,
        "confidence_scale": 60.0,
        "doubt_power": 4.0,  # issue 12, session 6: the declined answer's guess
    }


def test_a_jobs_own_settings_go_over_the_presets():
    opts = LocaliseOptions.parse(
        {"matcher_conf": {"ratio": 0.8}, "estimator_conf": {"radius": 4}, "top_k": None}
    )
    assert opts.effective_matcher_conf("xfeat") == {"min_similarity": 0.82, "ratio": 0.8}
    assert opts.effective_matcher_conf("xfeat") != LocaliseOptions().effective_matcher_conf("xfeat")
    assert opts.estimator_config() == ClusterConf(radius=4.0) and opts.top_k is None
    strict = LocaliseOptions.parse({"matcher_conf": {"min_similarity": 0.9}})
    assert strict.effective_matcher_conf("xfeat") == {"min_similarity": 0.9}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_consistent(name):
    preset = PRESETS[name]
    assert preset_for(preset.extractor, preset.matcher) is preset
    extractor = registry.extractor_class(preset.extractor)
    matcher = registry.matcher_class(preset.matcher)
    extractor.Conf.make(preset.extractor_conf)
    matcher.Conf.make(preset.matcher_conf)
    registry.retriever_class(preset.retriever).Conf.make(preset.retriever_conf)
    ESTIMATORS[preset.estimator].Conf.make(preset.estimator_conf)
    assert (
        matcher.compatible_extractors is None or preset.extractor in matcher.compatible_extractors
    )


def test_user_weights_come_from_settings_so_a_dotenv_file_supplies_them(tmp_path, monkeypatch):
    weights = tmp_path / "superpoint_v1.pth"
    weights.write_bytes(b"not read here")
    env = Settings.env_name("superpoint_weights")
    assert env == "FEATURELOC_SUPERPOINT_WEIGHTS"
    monkeypatch.delenv(env, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match=env):
        resolve_user_weights(None, "superpoint_weights", weights.name, "see the docs")
    (tmp_path / ".env").write_text(f"{env}={weights}\n")
    assert resolve_user_weights(None, "superpoint_weights", weights.name, "-") == weights
    other = tmp_path / "other.pth"
    other.write_bytes(b"")
    assert resolve_user_weights(other, "superpoint_weights", weights.name, "-") == other
