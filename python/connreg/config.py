"""Node settings: defaults < TOML file (--config) < environment (CONNREG_*) < command line."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass
class Settings:
    data_dir: Path = Path("./data")
    listen: str = "127.0.0.1:5000"
    log_level: str = "info"
    # The spec lets a registry cap manifest size; 4 MiB is what distribution and others use.
    max_manifest_bytes: int = 4 * MiB
    # Uploads untouched this long are purged (their bytes were never visible anyway).
    upload_ttl_seconds: float = 24 * 3600
    # --- upload sessions (docs/architecture.md, "Upload sessions") ---------------------------
    # How often expired sessions are purged while running (rows and files).
    upload_purge_interval_seconds: float = 300.0
    # An idle session's file descriptor is closed after this long (its hash state is kept, so
    # the next request reopens it without re-reading), and at most this many stay open.
    upload_idle_close_seconds: float = 5.0
    max_open_upload_files: int = 64
    # Open sessions per identity and in total; one more answers 429. 0: no cap.
    max_upload_sessions_per_identity: int = 100
    max_upload_sessions: int = 1000
    # An identity at its cap gets its least recently used session ended to make room if that
    # one has been idle this long (abandoned by a cut link, say), so a client that leaked
    # sessions (a child's pusher too) is not locked out for a whole TTL. 0: never.
    upload_reclaim_idle_seconds: float = 600.0
    # Bytes of manifests kept in memory; they are immutable by digest, so caching is safe.
    manifest_cache_bytes: int = 32 * MiB
    # glibc malloc arenas (0: glibc's default, 8 per core). Every worker thread that allocates
    # gets its own arena by default, and each keeps its high-water mark: under a soak that cost
    # 4-6 MiB/min of RSS that never came back; with 2 it was under 1.2 MiB/min (bench/RESULTS.md).
    malloc_arena_max: int = 2
    # glibc's mmap threshold, fixed (0: glibc's dynamic one, which after a burst kept 16 MiB
    # scrypt buffers and 4 MiB reads in the heap, never returned: connreg/memory.py).
    malloc_mmap_threshold_bytes: int = 256 * 1024
    # How often free heap pages go back to the system (malloc_trim) when RSS grew; 0: never.
    malloc_trim_interval_seconds: float = 10.0
    # Successful password checks remembered (60 s each; a miss costs two scrypt hashes)
    # and verified access tokens remembered (until they expire): entries, each under 1 KiB.
    credential_cache_entries: int = 10_000
    token_cache_entries: int = 10_000
    # tracemalloc frames kept per allocation, for GET /connreg/v1/debug/memory (0: off;
    # tracing costs CPU and about as much memory again as it traces: diagnosis only).
    memory_trace_frames: int = 0

    # --- connections (docs/operations.md, "Connections") --------------------------------------
    # Idle keep-alive connections are closed after this long; the same timer bounds how long a
    # request head may take to arrive (slowloris). Below the 90 s idle timeout of Go's default
    # HTTP transport, so such clients rarely reuse a connection the node is closing.
    keep_alive_timeout_seconds: float = 75.0
    # Request line plus headers (and an HTTP/2 header list); larger → 431 and the connection
    # closed. Room for Bearer tokens that carry many repository scopes.
    max_request_head_bytes: int = 64 * 1024

    # --- disk budget (docs/architecture.md, "Disk budget") -------------------------------------
    # Free space always left on the data dir's filesystem (SQLite, logs and the system need it);
    # writes that would eat into it answer 507. -1: 5 % of the filesystem, at most 1 GiB; 0: none.
    min_free_bytes: int = -1
    # Cap on the blob store (blobs + unfinished uploads), for a disk shared with others; 0: none.
    max_store_bytes: int = 0

    # --- garbage collection (docs/gc.md) ------------------------------------------------------
    # When the root collects garbage by itself (cron, UTC; "" = only on demand). Connected
    # registries follow their resource's gcEnabled/gcSchedule instead. Daily by default, like
    # the resource's default, so an unattended node gives space back.
    gc_schedule: str = "0 0 * * *"
    # Blobs linked or uploaded this recently are never collected: a push uploads its blobs
    # before the manifest that references them, and may take this long to get there.
    gc_grace_seconds: float = 3600
    # Untagged manifests (and their blobs) are kept this long; 0: GC never deletes manifests.
    gc_untagged_retention_seconds: float = 7 * 24 * 3600

    # --- auth (docs/auth.md) ----------------------------------------------------------------
    # Off only for an open test registry (`--no-auth`); every real deployment keeps it on.
    auth: bool = True
    # Opt-in: clients without credentials may pull every repository (never push or delete).
    anonymous_pull: bool = False
    # The admin's password; when empty, one is generated on first start into
    # <data_dir>/admin-password (0600). Never printed, never logged.
    admin_password: str = field(default="", repr=False)
    # `service` of the Bearer challenge and audience of the issued tokens.
    auth_service: str = "connreg"
    token_ttl_seconds: int = 300
    # A refresh token (docker keeps the one from `docker login`) lives until its password is
    # regenerated, disabled or expires, but never longer than this after that login.
    refresh_token_max_lifetime_seconds: int = 90 * 24 * 3600
    # Deprecated name of the maximum lifetime (it used to be a fixed 24 h); when set (> 0) it
    # still wins, so an operator's explicit choice keeps meaning what it meant.
    refresh_token_ttl_seconds: int = 0
    # Failed logins allowed per (account, source address) and window before that pair gets
    # 429 TOOMANYREQUESTS for a window; each further lockout doubles, up to the max.
    auth_failure_limit: int = 10
    auth_failure_window_seconds: float = 60.0
    auth_lockout_max_seconds: float = 900.0
    # Reverse proxies (CIDRs) whose X-Forwarded-For names the client a login is counted
    # against; from anyone else the header is ignored. Env/CLI: comma-separated.
    trusted_proxies: tuple[str, ...] = ()

    # --- control plane (docs/management-api.md) ---------------------------------------------
    # host:port this node is reached at by its children (default: `listen`).
    advertise_address: str = ""
    max_tokens: int = 20_000
    max_scope_maps: int = 20_000
    max_scope_map_repositories: int = 500
    max_client_tokens: int = 20

    # --- connected registry: present only on a node that has a parent (§4) ------------------
    connection_string: str = field(default="", repr=False)
    # host:port overriding the connection string's ParentGatewayEndpoint.
    parent_endpoint: str = ""
    # PEM CA bundle an https parent's certificate must verify against ("" = system store).
    parent_ca_file: str = ""

    # --- TLS (README, "Serving with TLS") -------------------------------------------------------
    # PEM certificate chain and its unencrypted key; both set serves HTTPS (HTTP/1.1 and h2).
    tls_cert: str = ""
    tls_key: str = ""
    # How often the two files are checked for a rotation (SIGHUP reloads at once); 0: SIGHUP only.
    tls_reload_check_seconds: float = 5.0

    # --- delta transfer (docs/delta.md) -----------------------------------------------------
    # FastCDC chunk sizes; parent and child must agree for chunks to be recognised.
    chunk_min_size: int = 16 * 1024
    chunk_avg_size: int = 64 * 1024
    chunk_max_size: int = 256 * 1024
    # zstd level for chunk batches on the wire (chunks that do not shrink travel raw).
    zstd_level: int = 3
    # Blobs smaller than this travel whole (resumable with Range); larger ones by chunks.
    delta_threshold_bytes: int = 1024 * 1024
    # Serve chunk lists and batches to children (off: children fall back to whole blobs).
    delta: bool = True
    # Gzip layers by their uncompressed change (docs/delta.md "Gzip layers"): analyse each
    # stored gzip layer once in the background (one low-priority thread, ~6-16 s of CPU per
    # 95 MB) so children can fetch its change and recreate it; off on nodes without children.
    gzip_analysis: bool = True
    # Fetch gzip layers from the parent by their uncompressed change when it has analysed them.
    gzip_delta: bool = True

    # --- metrics and dashboard (docs/operations.md) -------------------------------------------
    # GET /metrics without credentials, for a scraper on a private network; off: the admin or
    # a token with metrics/read must scrape (the series name this node's children).
    metrics_public: bool = False
    # A dashboard (/ui/) session ends this long after its login, however active it is.
    ui_session_seconds: int = 8 * 3600

    # --- audit trail (docs/audit.md) -------------------------------------------------------
    # Daily files under <data_dir>/audit/ older than this many days are deleted; 0: kept forever.
    audit_retention_days: int = 30
    # Which pulls are recorded: off, manifests (a pull is one manifest GET), all (blob GETs too,
    # many lines per pull).
    audit_pulls: str = "manifests"
    # The trail is fsynced this often (a power cut loses at most this much); 0: every event.
    # A killed process loses nothing either way (each event is one whole write()).
    audit_fsync_seconds: float = 1.0
    # --- sync throughput (issue 13, docs/sync.md "Throughput") ---------------------------------
    # Feed entries a child applies at once (different tags; one tag's changes stay in order):
    # one image at a time left each hop a queue of round trips.
    sync_apply_parallel: int = 8
    # Outbox entries in flight to the parent at once (one tag's changes stay in order).
    sync_push_parallel: int = 8
    # One batch request (`POST /connreg/v1/sync/objects`) names at most this many small objects
    # and answers at most this many bytes of them (the parent holds one batch in memory).
    sync_batch_max_objects: int = 256
    sync_batch_max_bytes: int = 8 * MiB
    # Batch answers a parent builds at once; further requests wait their turn (memory bound).
    sync_batch_parallel: int = 2
    # Manifests a child fetched ahead in a batch and has not stored yet (bytes; beyond, it
    # fetches them one by one as before).
    sync_prefetch_max_bytes: int = 16 * MiB
    # A ReadWrite child sends its outbox's small blobs and manifests to the parent in batches
    # (`POST /connreg/v1/sync/upload`); false: one OCI upload per object, as before (comparison).
    sync_upload_batch: bool = True
    # Password checks (scrypt, 16 MiB each) running at once; more logins wait for a slot.
    password_check_parallel: int = 2
    # Serving vs syncing (api/client_budget.py): while this node's sync has work, each client
    # (address + claimed identity) gets this many requests/s, so a poller cannot starve sync;
    # 0 = off. Sync traffic is never budgeted.
    client_request_rate: float = 50.0
    # Requests a client may make at once above the rate (a pull's burst of HEADs and GETs).
    client_request_burst: int = 100
    # An over-budget request waits its turn up to this long, then gets 429 + Retry-After.
    client_request_max_wait_seconds: float = 2.0
    # Budget clients even while sync is idle (a plain per-client rate limit).
    client_budget_always: bool = False

    # --- scaled root: shared engines for N replicas (docs/scaling.md) -------------------------
    # postgresql://… puts metadata and the control plane on PostgreSQL, shared by every replica
    # ("": SQLite in the data dir). May carry a password: never logged.
    metadata_url: str = field(default="", repr=False)
    # Where blobs live: "" = <data_dir>/store; a folder path every replica mounts; or
    # s3://BUCKET[/PREFIX] for S3-compatible object storage.
    blob_store: str = ""
    # Endpoint URL of an S3-compatible store (MinIO, Ceph, rclone …); "": AWS's own.
    s3_endpoint: str = ""
    # Write connections per replica to PostgreSQL (writes are serialized by a lock anyway).
    metadata_pool_size: int = 4
    # S3 blob store only: answer blob GETs with a 307 to a presigned URL of the object, so the
    # bytes flow from the store, not through a replica (distribution's `redirect`); only for
    # clients that can reach the store's endpoint.
    blob_redirect: bool = False
    # How long such a presigned URL stays valid (1 s .. 7 days, SigV4's limit).
    blob_redirect_seconds: int = 300
    # Plain http to a non-loopback s3_endpoint (a store on a private network): credentials are
    # signed, not sent, but blobs travel unencrypted. Loopback endpoints may always use http.
    s3_allow_http: bool = False

    # --- test-only knobs (never set in production; documented in docs/sync.md) ---------------
    # Shifts this node's clock for sync schedules, change-log retention and the token service
    # (token times, password expiry).
    test_clock_offset_seconds: float = 0.0
    # Lowers the PT1H minimum sync window the root accepts.
    test_min_sync_window_seconds: int = 0
    # Flip one byte in the first N chunk batches this node serves (corruption detection tests).
    test_corrupt_chunk_batches: int = 0
    # Flip one byte in the first N object batches this node serves (sync/batch_endpoints.py).
    test_corrupt_object_batches: int = 0
    # Flip one byte in the first N gzip reconstruction files this node serves (tests).
    test_corrupt_gzip_recon: int = 0
    # kill -9 itself midway through the first upload batch (sync/upload_batch*.py): as a parent
    # after storing its blobs, as a child after the parent's answer (crash tests).
    test_kill_in_upload_batch: bool = False

    @property
    def advertised(self) -> str:
        return self.advertise_address or self.listen

    @property
    def is_connected_registry(self) -> bool:
        return bool(self.connection_string)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @classmethod
    def load(cls, config_file: Path | None = None, overrides: dict[str, Any] | None = None,
             environ: dict[str, str] | None = None) -> "Settings":
        values: dict[str, Any] = {}
        if config_file is not None:
            with open(config_file, "rb") as f:
                values.update(tomllib.load(f))
        env = os.environ if environ is None else environ
        for f in fields(cls):
            key = f"CONNREG_{f.name.upper()}"
            if key in env:
                values[f.name] = env[key]
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls()
        for name, raw in values.items():
            default = getattr(settings, name)
            try:
                if isinstance(default, bool):
                    value = _parse_bool(raw)
                elif isinstance(default, tuple):  # a list: TOML array or "a,b" from env
                    items = raw.split(",") if isinstance(raw, str) else list(raw)
                    value = tuple(str(i).strip() for i in items if str(i).strip())
                else:
                    value = type(default)(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"setting {name}: {raw!r} is not a valid "
                                 f"{type(default).__name__}") from exc
            setattr(settings, name, value)
        settings.host_port  # validates listen early
        return settings


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
