"""Key and head-resolution caches per API process, and how changes reach every process
(docs/architecture.md, "Running across hosts").

A prediction needs the caller's key (one lookup and an HMAC) and each head reference resolved to a
version (head, alias, newest version: several queries). `LookupCache` keeps both per API process,
so a steady stream of predictions costs the database nothing but usage metering. Entries are
dropped when the rows they came from change: a head suspended or made private, an alias moved or
removed, a version registered or deleted, a key revoked. Refusals (401, 403, 404) are never cached.

How a change reaches the caches: SQLAlchemy session events (`install_session_hooks`) see every
flush and bulk statement that touches those rows, in any process (API, worker, tests), and
- in the writing process, clear every `LookupCache` of the process once the transaction commits;
- on PostgreSQL, `pg_notify('headhub_invalidate', ...)` inside the same transaction: delivered to
  every listening process exactly when, and only if, it commits;
- with Redis as the notifier, publish on `<redis_prefix>invalidate` right after the commit.
Each API process listens (`Listener`, a thread) and clears its cache on every message.

Bounds (tested in tests/http/test_invalidation.py):
- no notifier (`cache_notify=none`, or "auto" on SQLite without Redis): entries live
  `cache_ttl_s` (2 s), so a change made by another process is seen within that;
- with a notifier: within the message's delivery (milliseconds); entries live
  `cache_notified_ttl_s` (60 s) only as a backstop for a Redis publish lost to a writer killed
  between its commit and the publish (PostgreSQL's NOTIFY commits with the change: none is lost);
- while a listener is not connected, its process caches nothing (every request reads the
  database), and it clears its cache when it (re)connects.

A read racing a change cannot re-insert what the change invalidated: the cache's generation is
taken before the database read and the entry is kept only if no invalidation arrived meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from service.http.workers import SharedCounter
    from service.settings import Settings

log = logging.getLogger(__name__)

PG_CHANNEL = "headhub_invalidate"
RECONNECT_S = 1.0  # a listener's wait before it reconnects
_INFO_KEY = "headhub_invalidation"  # in Session.info: what this transaction changed
_CACHE_KEY = "headhub_lookups"  # in Session.info (from the sessionmaker): the app's cache
_PUBLISH_KEY = "headhub_publish"  # in Session.info: a callable publishing to Redis


class LookupCache:
    """Thread-safe TTL cache with a generation counter; see the module docstring."""

    def __init__(
        self,
        *,
        ttl_s: float,
        notified_ttl_s: float,
        notified: bool,
        siblings: SharedCounter | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.notified_ttl_s = notified_ttl_s
        self.notified = notified  # a listener is configured
        self.connected = False  # ... and subscribed right now
        self._items: dict[Hashable, tuple[float, Any]] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self.invalidations = 0
        # The host's other API workers (`headhub api --workers N`, service/http/workers.py):
        # a counter each bumps after a change; a moved counter clears this cache.
        self.siblings = siblings
        self._siblings_seen = siblings.value() if siblings is not None else 0
        _LOCAL_CACHES.add(self)

    def _sync_siblings(self) -> None:
        if self.siblings is None:
            return
        seen = self.siblings.value()
        if seen != self._siblings_seen:
            with self._lock:
                self._siblings_seen = seen
                self._generation += 1
                self._items.clear()
                self.invalidations += 1

    def _lifetime(self) -> float:
        if not self.notified:
            return self.ttl_s
        return self.notified_ttl_s if self.connected else 0.0

    def token(self) -> int:
        """Take before reading the database; hand to `put`."""
        self._sync_siblings()
        return self._generation

    def get(self, key: Hashable) -> Any:
        if self._lifetime() <= 0:
            return None
        self._sync_siblings()
        now = time.monotonic()
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            if found[0] <= now:
                del self._items[key]
                return None
            return found[1]

    def put(self, key: Hashable, value: Any, token: int) -> None:
        lifetime = self._lifetime()
        if lifetime <= 0:
            return
        self._sync_siblings()
        with self._lock:
            if token != self._generation:  # invalidated while the caller read the database
                return
            if len(self._items) >= 100_000:
                self._items.clear()
            self._items[key] = (time.monotonic() + lifetime, value)

    def invalidate(self, *, siblings: bool = False) -> None:
        """Drop every entry; `siblings`: this process committed the change, so the host's other
        API workers drop theirs too."""
        with self._lock:
            self._generation += 1
            self._items.clear()
            self.invalidations += 1
        if siblings and self.siblings is not None:
            value = self.siblings.increment()
            with self._lock:
                if value == self._siblings_seen + 1:  # only ours: nothing else to drop
                    self._siblings_seen = value

    def __len__(self) -> int:
        return len(self._items)


_LOCAL_CACHES: weakref.WeakSet[LookupCache] = weakref.WeakSet()


def cache_of(session: Session) -> LookupCache | None:
    """The app's cache, for code that has a session from the app's sessionmaker."""
    return session.info.get(_CACHE_KEY)  # type: ignore[no-any-return]


def invalidate_local() -> None:
    """After a commit in this process: its caches, and its sibling workers' on this host."""
    for cache in list(_LOCAL_CACHES):
        cache.invalidate(siblings=True)


# --- what counts as a change -----------------------------------------------------------------

# Columns whose change alters who may use what (updates of other columns, such as a key's
# last_used_at stamped every minute, do not invalidate anything).
_WATCHED_COLUMNS: dict[str, set[str] | None] = {
    "ApiKey": {"revoked_at", "scope", "secret_hash", "tenant_id"},
    "Tenant": {"name"},
    "Head": {"suspended", "visibility", "name", "tenant_id", "version_counter"},
    "HeadVersion": None,  # any change
    "HeadAlias": None,
    # The registry's verdict on a prediction's extractors (410 retired, Deprecation/Sunset).
    "Extractor": {"status", "sunset", "deprecated_at"},
}
_WATCHED_NEW = {"HeadVersion", "HeadAlias", "Extractor"}  # inserts that change an answer


def _watched(obj: object) -> bool:
    return type(obj).__name__ in _WATCHED_COLUMNS


def _changed(obj: object) -> bool:
    columns = _WATCHED_COLUMNS[type(obj).__name__]
    if columns is None:
        return True
    state = inspect(obj)
    return any(state.attrs[c].history.has_changes() for c in columns if c in state.attrs)


def _mark(session: Session) -> None:
    if not session.info.get(_INFO_KEY):
        session.info[_INFO_KEY] = True
        if session.get_bind().dialect.name == "postgresql":
            # Transactional: delivered at commit, dropped on rollback.
            session.connection().execute(text("SELECT pg_notify(:c, '')"), {"c": PG_CHANNEL})


def _after_flush(session: Session, _ctx: Any) -> None:
    if session.info.get(_INFO_KEY):
        return
    if any(_watched(o) for o in session.deleted) or any(
        _watched(o) and type(o).__name__ in _WATCHED_NEW for o in session.new
    ):
        _mark(session)
        return
    if any(_watched(o) and _changed(o) for o in session.dirty):
        _mark(session)


def _do_orm_execute(state: Any) -> None:
    if not (state.is_update or state.is_delete):
        return
    entity = state.bind_mapper.class_.__name__ if state.bind_mapper is not None else ""
    if entity in _WATCHED_COLUMNS:
        _mark(state.session)


def _after_commit(session: Session) -> None:
    if not session.info.pop(_INFO_KEY, False):
        return
    invalidate_local()
    publish = session.info.get(_PUBLISH_KEY)
    if publish is not None:
        publish()


def _after_rollback(session: Session) -> None:
    session.info.pop(_INFO_KEY, None)


_hooks_installed = False
_hooks_lock = threading.Lock()


def install_session_hooks() -> None:
    """Watch every Session of the process (idempotent)."""
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "do_orm_execute", _do_orm_execute)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_rollback", _after_rollback)
        _hooks_installed = True


# --- notifiers ---------------------------------------------------------------------------------


def notifier_kind(settings: Settings) -> str:
    """'postgres', 'redis' or 'none', from `cache_notify` and what is configured."""
    postgres = settings.database_url.startswith("postgresql")
    if settings.cache_notify == "auto":
        return "postgres" if postgres else "redis" if settings.redis_url else "none"
    if settings.cache_notify == "postgres" and not postgres:
        raise ValueError("HEADHUB_CACHE_NOTIFY=postgres needs a PostgreSQL HEADHUB_DATABASE_URL")
    if settings.cache_notify == "redis" and not settings.redis_url:
        raise ValueError("HEADHUB_CACHE_NOTIFY=redis needs HEADHUB_REDIS_URL")
    return settings.cache_notify


def redis_publisher(settings: Settings) -> Callable[[], None] | None:
    """A function publishing one invalidation on Redis, when Redis is the notifier."""
    if notifier_kind(settings) != "redis":
        return None
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
    channel = f"{settings.redis_prefix}invalidate"

    def publish() -> None:
        try:
            client.publish(channel, b"")
        except redis.RedisError as exc:  # the backstop TTL bounds what this loses
            log.warning("cache invalidation not published (%s)", type(exc).__name__)

    return publish


def bind_sessionmaker(
    factory: sessionmaker[Session], settings: Settings, cache: LookupCache | None = None
) -> None:
    """Sessions from `factory` publish their changes as `settings` say, and carry `cache`."""
    install_session_hooks()
    info: dict[str, Any] = dict(factory.kw.get("info") or {})
    publish = redis_publisher(settings)
    if publish is not None:
        info[_PUBLISH_KEY] = publish
    if cache is not None:
        info[_CACHE_KEY] = cache
    factory.configure(info=info)


class Listener:
    """A thread that clears `cache` on every invalidation message (PostgreSQL or Redis)."""

    def __init__(self, cache: LookupCache, settings: Settings) -> None:
        self.cache = cache
        self.kind = notifier_kind(settings)
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"headhub-invalidation-{self.kind}", daemon=True
        )

    def start(self) -> Listener:
        if self.kind != "none":
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cache.connected:
                return True
            time.sleep(0.02)
        return self.cache.connected

    def _run(self) -> None:
        listen = self._listen_postgres if self.kind == "postgres" else self._listen_redis
        while not self._stop.is_set():
            try:
                listen()
            except Exception as exc:
                log.warning("cache invalidation listener (%s) lost: %s", self.kind, exc)
            finally:
                self._disconnected()
            self._stop.wait(RECONNECT_S)

    def _connected(self) -> None:
        self.cache.invalidate()  # whatever was missed while away
        self.cache.connected = True

    def _disconnected(self) -> None:
        self.cache.connected = False
        self.cache.invalidate()

    def _listen_postgres(self) -> None:
        import psycopg

        dsn = self.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"LISTEN {PG_CHANNEL}")
            self._connected()
            while not self._stop.is_set():
                for _ in conn.notifies(timeout=0.5, stop_after=1):
                    self.cache.invalidate()
                # A dead server ends `notifies` quietly on some versions: ask it something.
                if conn.closed or conn.broken:
                    raise ConnectionError("listener connection closed")

    def _listen_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(
            self.settings.redis_url, socket_connect_timeout=5, health_check_interval=10
        )
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(f"{self.settings.redis_prefix}invalidate")
            # Trust the cache only once Redis has confirmed the subscription.
            deadline = time.monotonic() + 5
            while True:
                message = pubsub.get_message(timeout=0.5)
                if message is not None and message.get("type") == "subscribe":
                    break
                if time.monotonic() > deadline:
                    raise ConnectionError("no subscription confirmation from Redis")
            self._connected()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message is not None and message.get("type") == "message":
                    self.cache.invalidate()
        finally:
            pubsub.close()
            client.close()
