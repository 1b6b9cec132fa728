"""One settings object, read from the environment with the `HEADHUB_` prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEADHUB_", extra="ignore")

    # Where the embedded default keeps its SQLite file, blobs and generated secrets.
    data_dir: Path = Path(".headhub")
    # Default: SQLite under data_dir. Production: postgresql+psycopg://user@host/db
    database_url: str = ""
    # Comma-separated base URLs of extractor replicas; the client fails over between them.
    extractor_urls: Annotated[list[str], NoDecode] = ["http://127.0.0.1:8001"]
    extractor_timeout_s: float = 10.0
    # Checkpoints the extractor processes serve beside their default, as <id>.safetensors
    # (`headhub extractor install` puts them there; `headhub up` serves them). Default:
    # data_dir/extractors. Shared by every extractor replica (docs/architecture.md).
    extractor_dir: Path | None = None
    # Accepted as an `admin` bearer key when set (>= 32 characters).
    admin_key: SecretStr | None = None
    # Server-side secret mixed into key hashes (HMAC-SHA256). Generated under data_dir if unset.
    key_pepper: SecretStr | None = None
    # Blob store root; default data_dir/blobs. Used when blob_url is empty.
    blob_dir: Path | None = None
    # s3://bucket/prefix keeps blobs in an S3-compatible object store instead of blob_dir
    # (docs/architecture.md, "Running across hosts"). Credentials: the s3_* secrets below, else
    # boto3's standard chain (AWS_* variables, web identity, instance profile).
    blob_url: str = ""
    s3_endpoint_url: str = ""  # e.g. http://minio:9000; empty: AWS
    s3_region: str = ""  # empty: boto3's default (AWS_REGION, ...)
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    # redis://[:password@]host:6379/0 shares rate limits and cache invalidation between API
    # processes; empty: each process limits on its own.
    redis_url: str = ""
    # Prefix of every Redis key and channel headhub uses (deployments sharing one Redis differ).
    redis_prefix: str = "headhub:"

    # --- limits (docs/architecture.md, "Untrusted input" and "Tenancy and keys") ---
    max_body_bytes: int = 64 * 1024 * 1024
    max_files_per_request: int = 256
    max_field_bytes: int = 64 * 1024
    # Compute an upload's features in the background right after it (best effort, in-process).
    featurize_on_upload: bool = True
    max_image_pixels: int = 40_000_000
    max_archive_entries: int = 10_000
    max_archive_bytes: int = 512 * 1024 * 1024
    max_archive_ratio: int = 100
    max_images_per_tenant: int = 100_000
    max_active_jobs_per_tenant: int = 20
    rate_limit_per_minute: int = 600
    head_cache_bytes: int = 256 * 1024 * 1024
    # Burst size of the per-key token bucket (requests); default: rate_limit_per_minute.
    rate_limit_burst: int | None = None
    # Every key of a tenant together (an owner can mint keys); 0 turns it off. Burst: = rate.
    rate_limit_tenant_per_minute: int = 1200
    rate_limit_tenant_burst: int | None = None
    # Per client address, before authentication, on /v1 routes; 0 turns it off.
    rate_limit_address_per_minute: int = 1200
    rate_limit_address_burst: int | None = None
    # Failed authentications (401) per client address; once spent, that address's requests are
    # refused 429 before their key is looked at. 0 turns it off.
    auth_failures_per_minute: int = 10
    auth_failures_burst: int | None = None
    # Cache of key lookups and head resolutions per API process, and how changes (suspend,
    # visibility, alias, version delete, key revoke) reach other processes: "auto" is
    # PostgreSQL LISTEN/NOTIFY on PostgreSQL, else Redis pub/sub with redis_url, else none.
    cache_notify: Literal["auto", "postgres", "redis", "none"] = "auto"
    # Without a notifier, entries live this long: the bound on staleness across processes.
    cache_ttl_s: float = 2.0
    # With a notifier: a backstop for a lost message (a publisher killed right after commit).
    cache_notified_ttl_s: float = 60.0
    # Usage of public heads is counted in memory and written in one transaction at least this
    # often (and at shutdown): a crashed API process loses at most this long's counts.
    usage_flush_interval_s: float = Field(default=1.0, gt=0, le=1.0)

    # --- operations (README, "Operations") ---
    log_level: str = "INFO"
    # "json" (one object per line, for log shippers) or "text" (for a terminal).
    log_format: str = "json"
    # SIGTERM: seconds in-flight requests get to finish before uvicorn drops them.
    shutdown_timeout_s: float = 30.0

    # --- training jobs and workers (docs/architecture.md, "Data flow of training") ---
    # A running job whose worker has not renewed its lease for this long is claimed again.
    job_lease_s: float = 30.0
    # How often a worker renews its lease, writes progress and reads cancel requests.
    job_heartbeat_s: float = 2.0
    job_max_attempts: int = 3
    # Retry n waits base * 2^(n-1) seconds, capped at max.
    job_backoff_base_s: float = 5.0
    job_backoff_max_s: float = 600.0
    # Idle workers look for claimable jobs this often.
    worker_poll_s: float = 1.0
    # SIGTERM: a running job gets this long to finish before it is handed back to the queue.
    worker_grace_s: float = 30.0
    # Intra-op threads per training job; concurrency, not threads, is what scales heads.
    worker_torch_threads: int = 1
    # `headhub worker` serves /healthz and /readyz on this port (all interfaces); 0: no server.
    worker_health_port: int = Field(default=0, ge=0, le=65535)

    # --- bounded work per tenant (docs/threats.md) ---
    # Bodies: a request that carries one is authenticated before a byte of it is read, then held
    # to its route's limit: `max_body_bytes` on the upload routes (dataset images, predict),
    # `max_features_body_bytes` on POST /v1/predict/features, `max_json_body_bytes` elsewhere.
    max_json_body_bytes: int = 64 * 1024
    max_features_body_bytes: int = 4 * 1024 * 1024
    # Declared pixels of all images of one predict request together (the extractor process reads
    # the same variable): 256 files of 40 Mpx would be 10 Gpx of decoding.
    max_request_pixels: int = 250_000_000
    # Images decoded at once by one extractor process (read there from the same variable);
    # images waiting for a decoder count towards its queue, so a full queue answers 503 early.
    extractor_decode_concurrency: int = 2
    # A timed-out feature call is sent to another replica only if it held at most this many
    # images: a large batch that timed out would only time out again, on every replica.
    extractor_retry_max_images: int = 4
    # Bytes of one image (a `files` part, an archive entry, a predicted image).
    max_image_bytes: int = 32 * 1024 * 1024
    # Stored image bytes per tenant, all datasets together (duplicates within a dataset are free).
    max_bytes_per_tenant: int = 20 * 1024**3
    # Distinct labels per dataset, and so per job (metrics hold a labels x labels matrix).
    max_labels_per_dataset: int = 1000
    # Objects per tenant.
    max_datasets_per_tenant: int = 1000
    max_heads_per_tenant: int = 1000
    max_keys_per_tenant: int = 100  # keys not revoked
    max_aliases_per_tenant: int = 1000
    # Wall clock of one training attempt; past it the job fails `job_timeout`, not retried.
    job_max_runtime_s: float = 3600.0
    # Largest `epochs` a job may ask for (the trainer's own bound is 100,000).
    job_max_epochs: int = 5000
    # Unauthenticated probes (/readyz, /metrics) reuse their database and extractor answers
    # this long, so hammering them costs no queries.
    probe_cache_s: float = 2.0

    @field_validator("extractor_urls", mode="before")
    @classmethod
    def _split_urls(cls, v: object) -> object:
        if isinstance(v, str):
            return [u.strip().rstrip("/") for u in v.split(",") if u.strip()]
        return v

    @field_validator("admin_key")
    @classmethod
    def _admin_key_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("HEADHUB_ADMIN_KEY must be at least 32 characters")
        return v

    @model_validator(mode="after")
    def _defaults_under_data_dir(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'headhub.db').resolve()}"
        if self.blob_dir is None:
            self.blob_dir = self.data_dir / "blobs"
        if self.extractor_dir is None:
            self.extractor_dir = self.data_dir / "extractors"
        return self

    def pepper(self) -> bytes:
        """The HMAC pepper: from the environment, else a random one persisted under data_dir."""
        if self.key_pepper is not None:
            return self.key_pepper.get_secret_value().encode()
        path = self.data_dir / "pepper"
        if not path.exists():
            import secrets

            create_secret_file(path, secrets.token_hex(32))
        return path.read_text().strip().encode()


def create_secret_file(path: Path, text: str) -> None:
    """Write `text` to `path` as a file that is mode 0600 from its first byte (never readable by
    others, not even for a moment), whole or not at all. A file already there, another process
    having won the race, is kept: every process ends up with the same secret."""
    import contextlib
    import os
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # atomic, and never replaces a secret another process wrote first
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@lru_cache
def get_settings() -> Settings:
    return Settings()


__all__ = ["Field", "Settings", "get_settings"]
