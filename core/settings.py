"""Settings read from the environment (prefix ``FEATURELOC_``) or a ``.env`` file.

Defaults work on one machine: a SQLite file, a local blob directory and Redis on localhost.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEATURELOC_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("featureloc-data"), description="Root for local state.")
    broker_url: SecretStr = SecretStr("redis://localhost:6379/0")
    database_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file in data_dir."
    )
    blob_dir: Path | None = Field(default=None, description="Query images; default data_dir/blobs.")
    maps_dir: Path | None = Field(default=None, description="Maps; default data_dir/maps.")
    # Where query photos go: blob_dir, or an S3-compatible bucket (needs the "s3" extra).
    blob_backend: Literal["dir", "s3"] = "dir"
    s3_bucket: str | None = None
    s3_prefix: str = "blobs"
    s3_endpoint_url: str | None = Field(default=None, description="e.g. MinIO; None: AWS.")
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Where workers find maps: maps_dir as is, or versions published to the S3 bucket above
    # (workers/mapversions.py), pulled into map_cache_dir.
    map_backend: Literal["dir", "s3"] = "dir"
    s3_map_prefix: str = "maps"
    map_cache_dir: Path | None = Field(default=None, description="default data_dir/map-cache")
    map_refresh_seconds: float = Field(
        default=5.0, ge=0, description="how often to look for a newer version"
    )

    # Input limits: an upload larger than this is refused before decoding.
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    min_image_side: int = 16

    # Worker time limits (seconds); both stay below the broker's visibility timeout.
    task_soft_time_limit: int = 300
    task_time_limit: int = 360
    torch_threads: int = 0  # 0: leave torch's default
    worker_max_tasks_per_child: int = 1000
    # Seconds between stale job checks in each worker (0: only at start); see workers/recovery.py.
    stale_check_interval: int = 60

    # Queue names: map builds have their own queue so they never starve queries.
    localise_queue: str = "localise"
    build_queue: str = "build"

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        if self.database_url is None:
            db_path = (self.data_dir / "featureloc.db").resolve()
            self.database_url = SecretStr(f"sqlite:///{db_path}")
        if self.blob_dir is None:
            self.blob_dir = self.data_dir / "blobs"
        if self.maps_dir is None:
            self.maps_dir = self.data_dir / "maps"
        if self.map_cache_dir is None:
            self.map_cache_dir = self.data_dir / "map-cache"
        return self

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
