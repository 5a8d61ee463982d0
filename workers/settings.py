"""Settings read from the environment (prefix ``FEATURELOC_``) or a ``.env`` file.

Defaults work on one machine: a SQLite file, a local blob directory and Redis on localhost.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.userweights import use_weights_from


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEATURELOC_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("featureloc-data"), description="Root for local state.")
    broker_url: SecretStr = SecretStr("redis://localhost:6379/0")
    # The next three default to places under data_dir (filled in by _fill_paths), so they are
    # never None once the settings exist.
    database_url: SecretStr = Field(
        description="SQLAlchemy URL; default: a SQLite file in data_dir."
    )
    blob_dir: Path = Field(description="Query images; default data_dir/blobs.")
    maps_dir: Path = Field(description="Maps; default data_dir/maps.")
    # Where query photos go: blob_dir, or an S3-compatible bucket (needs the "s3" extra).
    blob_backend: Literal["dir", "s3"] = "dir"
    s3_bucket: str | None = None
    s3_prefix: str = "blobs"
    s3_endpoint_url: str | None = Field(default=None, description="e.g. MinIO; None: AWS.")
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The profile of jobs that do not choose one (core/localiser.py LocaliseOptions.profile);
    # None: core/defaults.py DEFAULT_PROFILE. "accurate" suits GPU workers (README).
    profile: Literal["fast", "accurate"] | None = None
    # Queue the map's held-out fit (workers/fit.py) after each queued build or extension.
    fit_after_build: bool = False
    # Queue the map's pair frames (workers/geometry.py, core/pairframes.py) after each queued
    # build or extension of a map with a camera: placement reads them instead of solving its
    # pairs per query (BENCHMARKS.md, section 21). A map without a camera gets none.
    geometry_after_build: bool = True
    # Checkpoints featureloc may not ship (core/weights.py resolve_user_weights); a plug-in's
    # own "weights" option wins over these.
    superpoint_weights: Path | None = Field(default=None, description="superpoint_v1.pth")
    superglue_weights: Path | None = Field(
        default=None, description="superglue_outdoor.pth or superglue_indoor.pth"
    )
    # Where workers find maps: maps_dir as is, or versions published to the S3 bucket above
    # (workers/mapversions.py), pulled into map_cache_dir.
    map_backend: Literal["dir", "s3"] = "dir"
    s3_map_prefix: str = "maps"
    map_cache_dir: Path = Field(description="Pulled map versions; default data_dir/map-cache.")
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
    # Held-out positions one map-fit task localises before it sends itself for the rest
    # (workers/fit.py): few enough that a step ends well inside the soft time limit even when
    # every one escalates to the fine stage on a slow CPU.
    fit_step_positions: int = Field(default=8, ge=1)
    torch_threads: int = 0  # 0: leave torch's default
    # Threads that verify a job's pairs (core.verify.verify_many); 0: the cores a worker
    # process has to itself (workers/layout.py), so 1 where every core runs a process.
    verify_threads: int = Field(default=0, ge=0)
    worker_max_tasks_per_child: int = 1000
    preload_maps: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Maps a CPU worker loads in its main process before the pool forks"
        " (comma-separated): its processes share one copy of the models and the maps' indexes"
        " and none loads on its first job (workers/runtime.preload).",
    )
    # Recovery (workers/recovery.py): a running job's process refreshes its heartbeat every
    # heartbeat_interval s; with none for stale_after s its worker is taken for dead and the job
    # re-sent. Each worker checks every stale_check_interval s (0: only at start). Worst case a
    # dead worker's job is back in the queue stale_after + stale_check_interval s after death.
    heartbeat_interval: float = 5.0
    stale_after: float = 20.0
    stale_check_interval: float = 10.0

    # Queue names: map builds have their own queue so they never starve queries.
    localise_queue: str = "localise"
    build_queue: str = "build"

    # HTTP API (api/, ``featureloc serve``).
    api_rate_limit: int = Field(
        default=600, ge=0, description="Requests per minute per API key (0: no limit)."
    )
    api_redis_url: SecretStr | None = Field(
        default=None, description="Redis for the rate limit; default: the broker when Redis."
    )
    api_max_wait: float = Field(default=60.0, gt=0, description="Longest ?wait= long-poll (s).")

    @model_validator(mode="before")
    @classmethod
    def _fill_paths(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        data_dir = Path(values.get("data_dir") or cls.model_fields["data_dir"].default)
        defaults = {
            "database_url": f"sqlite:///{(data_dir / 'featureloc.db').resolve()}",
            "blob_dir": data_dir / "blobs",
            "maps_dir": data_dir / "maps",
            "map_cache_dir": data_dir / "map-cache",
        }
        for key, default in defaults.items():
            if values.get(key) is None:
                values[key] = default
        return values

    @field_validator("preload_maps", mode="before")
    @classmethod
    def _split_names(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [name.strip() for name in v.split(",") if name.strip()]
        return v

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable (and .env key) that sets ``field``."""
        return f"{cls.model_config['env_prefix']}{field}".upper()

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        # device_count asks NVML, which leaves no CUDA state behind: is_available would
        # initialise CUDA in the worker's main process, and its forked pool could not use it.
        return "cuda" if torch.cuda.device_count() > 0 else "cpu"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def user_weights(setting: str) -> tuple[Path | None, str]:
    """A checkpoint path of these settings (``superpoint_weights``, ``superglue_weights``) for
    core/userweights.py, read when a plug-in loads."""
    how = f"the environment variable {Settings.env_name(setting)} (or that line in .env)"
    return getattr(Settings(), setting), how


use_weights_from(user_weights)  # every process that loads the settings supplies the weights
