"""Rate limits: token buckets per API key, per tenant, per client address and for failed
authentications per address; 429 problem+json with a `code` and `Retry-After`
(docs/architecture.md, "Tenancy and keys" and "Running across hosts").

Where the buckets live:
- `MemoryBuckets` (the default): in the API process. With N API processes a client may get up to
  N times each configured rate.
- `SharedBuckets` (`headhub api --workers N` without Redis; service/http/workers.py): in a file
  the host's workers map, so the N workers of one host allow each rate once.
- `RedisBuckets` (`HEADHUB_REDIS_URL` set): in Redis, shared by every API process on every host.
  One Lua script refills and takes from all the buckets of a check atomically, on Redis's clock
  (`TIME`), so hosts with skewed clocks agree and two processes never both spend the last token.
  The buckets of one check share a hash tag, so the script also runs on Redis Cluster. While
  Redis does not answer, each process falls back to its own memory buckets (limits stay, per
  process) and tries Redis again after `REDIS_RETRY_S`; a warning is logged.

What is checked, in order:
1. `AddressLimitMiddleware`, on every `/v1` request before anything else (before the key is
   looked at, before the body is read): the address's bucket (`rate_limit_address_per_minute`,
   code `address_rate_limited`) and its failed-authentication bucket, looked at without taking
   (`auth_failures_per_minute`, code `too_many_auth_failures`). A 401 answer then takes a token
   from the latter. IPv6 clients are counted per /64, the block one subscriber usually holds.
   The address is the peer's, or the `X-Forwarded-For` client that uvicorn accepts from the
   proxies named in `FORWARDED_ALLOW_IPS`.
2. `RateLimits.check_principal`, once the key is known: the key's bucket
   (`rate_limit_per_minute`, code `rate_limited`) and its tenant's (`rate_limit_tenant_per_minute`,
   code `tenant_rate_limited`; every key of a tenant together, so minting keys buys nothing),
   taken together or not at all.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from service.errors import RateLimited

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from service.auth import Principal
    from service.settings import Settings

log = logging.getLogger(__name__)

REDIS_RETRY_S = 5.0  # after a Redis failure, memory buckets for this long, then Redis again
REDIS_TIMEOUT_S = 0.5  # connect and read timeout of one check


@dataclass(frozen=True)
class Rule:
    """One kind of bucket: its refill rate, its size and how a refusal reads."""

    name: str
    per_minute: int
    burst: int
    code: str
    what: str  # "this API key", ...

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0  # tokens per second

    @staticmethod
    def make(name: str, per_minute: int, burst: int | None, code: str, what: str) -> Rule | None:
        if per_minute <= 0:
            return None
        return Rule(
            name, per_minute, max(1, burst if burst is not None else per_minute), code, what
        )


@dataclass(frozen=True)
class Take:
    """Take `cost` tokens from bucket `key` of `rule` (cost 0: only look whether one is left)."""

    key: str
    rule: Rule
    cost: int = 1


@dataclass(frozen=True)
class Refusal:
    rule: Rule
    wait_s: float

    def error(self) -> RateLimited:
        retry = max(1, math.ceil(self.wait_s))
        return RateLimited(
            f"Too many requests for {self.rule.what}; retry in {retry} s.",
            retry_after=retry,
            code=self.rule.code,
        )


class Buckets(Protocol):
    remote: bool

    def take(self, takes: Sequence[Take]) -> Refusal | None:
        """Atomically: when every bucket holds at least max(cost, 1) tokens, take `cost` from each
        and return None; else take nothing and return the first refusing bucket's wait."""
        ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class MemoryBuckets:
    """Buckets in this process's memory; thread-safe, bounded to `max_keys` (stalest forgotten)."""

    remote = False

    def __init__(
        self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, takes: Sequence[Take]) -> Refusal | None:
        now = self._clock()
        with self._lock:
            levels = []
            for t in takes:
                bucket = self._buckets.get(t.key)
                tokens = float(t.rule.burst)
                if bucket is not None:
                    elapsed = max(0.0, now - bucket.updated)
                    tokens = min(t.rule.burst, bucket.tokens + elapsed * t.rule.rate)
                levels.append(tokens)
            for t, tokens in zip(takes, levels, strict=True):
                need = max(t.cost, 1)
                if tokens < need:
                    return Refusal(t.rule, (need - tokens) / t.rule.rate)
            for t, tokens in zip(takes, levels, strict=True):
                if t.cost <= 0:
                    continue
                self._buckets[t.key] = _Bucket(tokens - t.cost, now)
                self._buckets.move_to_end(t.key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return None


# KEYS: the buckets. ARGV: for each bucket, cost, rate (tokens/s), burst. Returns
# {index of the first refusing bucket or 0, seconds to wait as a string}.
_TAKE_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels = {}
for i = 1, #KEYS do
  local cost = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local burst = tonumber(ARGV[3 * i])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(v[1])
  local ts = tonumber(v[2])
  if tokens == nil or ts == nil then
    tokens = burst
  else
    tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  end
  local need = math.max(cost, 1)
  if tokens < need then
    return {i, tostring((need - tokens) / rate)}
  end
  levels[i] = tokens
end
for i = 1, #KEYS do
  local cost = tonumber(ARGV[3 * i - 2])
  if cost > 0 then
    local rate = tonumber(ARGV[3 * i - 1])
    local burst = tonumber(ARGV[3 * i])
    redis.call('HSET', KEYS[i], 'tokens', tostring(levels[i] - cost), 'ts', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
  end
end
return {0, '0'}
"""


class RedisBuckets:
    """Buckets in Redis, shared by every process; `fallback` while Redis does not answer."""

    remote = True

    def __init__(self, url: str, *, prefix: str, fallback: MemoryBuckets | None = None) -> None:
        import redis

        self.prefix = prefix
        self.fallback = fallback or MemoryBuckets()
        self._client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._script = self._client.register_script(_TAKE_LUA)
        self._down_until = 0.0
        self.failures = 0  # checks answered by the fallback (for tests and metrics)

    def take(self, takes: Sequence[Take]) -> Refusal | None:
        import redis

        if time.monotonic() < self._down_until:
            self.failures += 1
            return self.fallback.take(takes)
        args: list[Any] = []
        for t in takes:
            args += [t.cost, repr(t.rule.rate), t.rule.burst]
        try:
            index, wait = self._script(keys=[self.prefix + t.key for t in takes], args=args)
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + REDIS_RETRY_S
            self.failures += 1
            log.warning(
                "rate limits: Redis unavailable (%s); per-process limits for %.0f s",
                type(exc).__name__,
                REDIS_RETRY_S,
            )
            return self.fallback.take(takes)
        if int(index) == 0:
            return None
        return Refusal(takes[int(index) - 1].rule, float(wait))

    def close(self) -> None:
        self._client.close()


def address_bucket(host: str) -> str:
    """The bucket name of a client address: IPv4 as is, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # "testclient", a unix socket: whatever the server reports
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class RateLimits:
    """The configured rules over one set of buckets (memory or Redis)."""

    def __init__(
        self,
        buckets: Buckets,
        *,
        key: Rule | None = None,
        tenant: Rule | None = None,
        address: Rule | None = None,
        auth_failures: Rule | None = None,
    ) -> None:
        self.buckets = buckets
        self.key, self.tenant = key, tenant
        self.address, self.auth_failures = address, auth_failures

    @property
    def remote(self) -> bool:
        return self.buckets.remote

    def check_principal(self, principal: Principal) -> None:
        """The key's and its tenant's buckets, both or neither; raises `RateLimited`."""
        # One hash tag per tenant: the key and tenant buckets of a check share a Redis slot.
        tag = "{" + (principal.tenant_id or "admin") + "}"
        takes = []
        if self.key is not None:
            takes.append(Take(f"{tag}:key:{principal.key_id}", self.key))
        if self.tenant is not None and principal.tenant_id is not None:
            takes.append(Take(f"{tag}:tenant", self.tenant))
        if takes and (refusal := self.buckets.take(takes)) is not None:
            raise refusal.error()

    def check(self, key_id: str) -> None:
        """The key's bucket alone (callers that know no tenant)."""
        if self.key is not None and (refusal := self.buckets.take([Take(key_id, self.key)])):
            raise refusal.error()

    def check_address(self, host: str) -> Refusal | None:
        """Before authentication: one token of the address's bucket, and a look at its
        failed-authentication bucket."""
        tag = "{" + address_bucket(host) + "}"
        takes = []
        if self.address is not None:
            takes.append(Take(f"{tag}:addr", self.address))
        if self.auth_failures is not None:
            takes.append(Take(f"{tag}:authfail", self.auth_failures, cost=0))
        return self.buckets.take(takes) if takes else None

    def record_auth_failure(self, host: str) -> None:
        if self.auth_failures is not None:
            tag = "{" + address_bucket(host) + "}"
            self.buckets.take([Take(f"{tag}:authfail", self.auth_failures)])

    @property
    def limits_addresses(self) -> bool:
        return self.address is not None or self.auth_failures is not None


def make_rate_limits(settings: Settings) -> RateLimits | None:
    """The app's limits from settings (None when every rule is off): Redis buckets with
    `redis_url`, memory buckets otherwise."""
    s = settings
    rules = {
        "key": Rule.make(
            "key", s.rate_limit_per_minute, s.rate_limit_burst, "rate_limited", "this API key"
        ),
        "tenant": Rule.make(
            "tenant",
            s.rate_limit_tenant_per_minute,
            s.rate_limit_tenant_burst,
            "tenant_rate_limited",
            "this tenant (all its keys together)",
        ),
        "address": Rule.make(
            "address",
            s.rate_limit_address_per_minute,
            s.rate_limit_address_burst,
            "address_rate_limited",
            "this client address",
        ),
        "auth_failures": Rule.make(
            "auth_failures",
            s.auth_failures_per_minute,
            s.auth_failures_burst,
            "too_many_auth_failures",
            "this client address after failed authentications",
        ),
    }
    if all(r is None for r in rules.values()):
        return None
    from service.http.workers import SharedBuckets, shared_dir

    workers_dir = shared_dir()  # one of `headhub api --workers N`: one set of buckets per host
    buckets: Buckets
    if s.redis_url:
        buckets = RedisBuckets(s.redis_url, prefix=f"{s.redis_prefix}rl:")
    elif workers_dir is not None:
        buckets = SharedBuckets(workers_dir / "ratelimit")
    else:
        buckets = MemoryBuckets()
    return RateLimits(buckets, **rules)


class AddressLimitMiddleware:
    """Per-address limits on `/v1` requests before authentication, and counting of 401s."""

    def __init__(self, app: ASGIApp, limits: RateLimits | None) -> None:
        self.app = app
        self.limits = limits if limits is not None and limits.limits_addresses else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits
        if limits is None or scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        from extractor.web.problems import problem

        client = scope.get("client")
        host = str(client[0]) if client else "unknown"
        refusal = await _run(limits, limits.check_address, host)
        if refusal is not None:
            err = refusal.error()
            response = problem(err.status, err.title, err.detail, err.instance_code, err.headers)
            await response(scope, receive, send)
            return
        status: list[int] = []

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            if status and status[0] == 401:
                await _run(limits, limits.record_auth_failure, host)


async def _run(limits: RateLimits, fn: Callable[..., Any], *args: Any) -> Any:
    """A Redis round trip off the event loop; memory buckets inline."""
    if limits.remote:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *args)
    return fn(*args)


class TokenBucketLimiter:
    """One rule over memory buckets: `rate_per_minute` per key on average, bursts up to `burst`
    (default: one minute's worth, so a client under the per-minute figure is never refused)."""

    def __init__(
        self,
        rate_per_minute: int,
        *,
        burst: int | None = None,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        rule = Rule.make("key", rate_per_minute, burst, "rate_limited", "this API key")
        if rule is None:
            raise ValueError("rate_per_minute must be positive; use no limiter to disable")
        self.rule = rule
        self.rate, self.burst = rule.rate, float(rule.burst)
        self.max_keys = max_keys
        self.buckets = MemoryBuckets(max_keys=max_keys, clock=clock)

    @property
    def _buckets(self) -> OrderedDict[str, _Bucket]:
        return self.buckets._buckets

    def check(self, key: str) -> None:
        """Take one token for `key` or raise `RateLimited` with the seconds until the next one."""
        refusal = self.buckets.take([Take(key, self.rule)])
        if refusal is not None:
            raise refusal.error()

    def acquire(self, key: str) -> float:
        """-> 0.0 when a token was taken, else the seconds to wait (nothing taken)."""
        refusal = self.buckets.take([Take(key, self.rule)])
        return 0.0 if refusal is None else refusal.wait_s


def make_limiter(rate_per_minute: int, burst: int | None = None) -> TokenBucketLimiter | None:
    """A per-key limiter alone; a rate of 0 turns limiting off."""
    if rate_per_minute <= 0:
        return None
    return TokenBucketLimiter(rate_per_minute, burst=burst)
