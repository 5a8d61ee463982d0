"""docker-compose.yml cannot run here (no Docker engine): check its shape instead."""

from __future__ import annotations

import yaml

from tests.support.paths import REPO
from workers.settings import Settings


def test_compose_has_the_production_services():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "worker", "flower", "api"} <= set(services)
    assert services["worker"]["command"][0] == "worker"
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"], "Flower must require auth"
    for name in ("worker", "gpu-worker", "cli", "api"):
        env = services[name]["environment"]
        # Every FEATURELOC_ variable the compose file sets must be a real setting.
        fields = {f"FEATURELOC_{k.upper()}" for k in Settings.model_fields}
        assert set(env) <= fields, set(env) - fields
        assert env["FEATURELOC_BROKER_URL"].startswith("redis://redis:")
        assert env["FEATURELOC_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "${POSTGRES_PASSWORD" in env["FEATURELOC_DATABASE_URL"], "no password in the file"
    assert (REPO / services["worker"]["build"] / "Dockerfile").is_file()


def test_compose_api_service_serves_the_http_api():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["command"][0] == "serve"
    # Listens on all interfaces inside its container, published on the host's loopback only:
    # TLS is a reverse proxy's job (README), plain HTTP must not face the network.
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    assert all(p.startswith("127.0.0.1:") for p in api["ports"])
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert "featureloc-data:/data" in api["volumes"], "the API reads the maps and blobs"
    assert set(api["depends_on"]) == {"redis", "postgres"}


def test_compose_minio_serves_map_versions_on_loopback_without_secrets_in_the_file():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    minio = compose["services"]["minio"]
    assert minio["profiles"] == ["s3"], "object storage is opt-in: the local directory is default"
    assert all(p.startswith("127.0.0.1:") for p in minio["ports"])
    assert all(v.startswith("${") for v in minio["environment"].values()), "no secret in the file"
    assert "minio-data:/data" in minio["volumes"] and "minio-data" in compose["volumes"]


def test_flower_listens_on_loopback_by_default():
    """Flower serves /metrics without a login: published on the host's loopback only, and
    ``featureloc flower`` listens on 127.0.0.1 unless told otherwise (as ``serve`` does)."""
    import inspect

    from cli.flower import flower_command
    from cli.serve import serve_command

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    flower = compose["services"]["flower"]
    assert flower["ports"] and all(p.startswith("127.0.0.1:") for p in flower["ports"])
    assert "--address=0.0.0.0" in flower["entrypoint"], "inside its container, for the mapping"
    address = inspect.signature(flower_command).parameters["address"].default
    host = inspect.signature(serve_command).parameters["host"].default
    assert address == host == "127.0.0.1"


def test_compose_gpu_worker_reserves_a_gpu_and_builds_cuda_torch():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    gpu = compose["services"]["gpu-worker"]
    assert gpu["profiles"] == ["gpu"], "GPU workers are opt-in: CPU hosts start without them"
    assert gpu["command"][0] == "worker" and gpu["environment"]["FEATURELOC_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "/whl/cu" in gpu["build"]["args"]["TORCH_INDEX"]
    # The CPU images stay as they were: the Dockerfile's default is the CPU wheel index.
    dockerfile = (REPO / gpu["build"]["context"] / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile
    assert '--index-url "$TORCH_INDEX" torch' in dockerfile
    for name in ("worker", "api", "cli", "flower"):
        assert compose["services"][name]["build"] == ".", f"{name} builds the CPU image"
