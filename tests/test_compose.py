"""docker-compose.yml cannot run here (no Docker engine): check its shape instead."""

from __future__ import annotations

import yaml

from core.settings import Settings
from tests.support.paths import REPO


def test_compose_has_the_production_services():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "worker", "flower"} <= set(services)
    assert services["worker"]["command"][0] == "worker"
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"], "Flower must require auth"
    for name in ("worker", "cli"):
        env = services[name]["environment"]
        # Every FEATURELOC_ variable the compose file sets must be a real setting.
        fields = {f"FEATURELOC_{k.upper()}" for k in Settings.model_fields}
        assert set(env) <= fields, set(env) - fields
        assert env["FEATURELOC_BROKER_URL"].startswith("redis://redis:")
        assert env["FEATURELOC_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "${POSTGRES_PASSWORD" in env["FEATURELOC_DATABASE_URL"], "no password in the file"
    assert (REPO / services["worker"]["build"] / "Dockerfile").is_file()
