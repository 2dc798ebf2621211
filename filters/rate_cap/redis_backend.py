"""The Redis backend of rate_cap: every cap of a request checked and committed in one atomic Lua script."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.redis_client import RedisClient, RedisUnavailable, describe
from filters.rate_cap.config import RedisSettings
from filters.rate_cap.memory import BackendUnavailable, Check, Outcome

# Times are Redis' own clock (TIME) in milliseconds, so proxies on different machines agree on them.
# Numbers go out as formatted strings: Redis truncates Lua numbers to integers on the way back.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function fmt(x) return string.format('%.3f', x) end
local function refill(key, limit, window)
  local state = redis.call('HMGET', key, 'level', 'ts')
  local level = tonumber(state[1])
  if level == nil then return limit end
  return math.min(limit, level + math.max(0, now - tonumber(state[2])) * limit / window)
end
local function store(key, level, limit, window)
  redis.call('HSET', key, 'level', fmt(level), 'ts', fmt(now))
  redis.call('PEXPIRE', key, string.format('%d', math.ceil((limit - level) * window / limit) + 1000))
end
"""

# KEYS: one per check. ARGV: lease id, lease ms, then kind, limit, window ms, burst, cost per check.
ACQUIRE = _PRELUDE + """
local lease, lease_ms = ARGV[1], tonumber(ARGV[2])
local out, commit, all = {}, {}, 1
for i, key in ipairs(KEYS) do
  local b = 2 + (i - 1) * 5
  local kind, limit, window = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local burst, cost = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local ok, remaining, reset, retry = 0, 0, 0, 0
  if kind == 'requests' then
    local interval = window / limit
    local tolerance = interval * burst + 0.001
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local new_tat = tat + interval * cost
    if new_tat - now <= tolerance then
      ok, remaining, reset = 1, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now
      commit[i] = new_tat
    else
      remaining, reset = math.max(0, math.floor((tolerance - (tat - now)) / interval)), tat - now
      retry = new_tat - now - tolerance
    end
  elseif kind == 'tokens' then
    local level = refill(key, limit, window)
    local rate = limit / window
    if level >= math.min(cost, limit) then
      ok, level = 1, level - cost
      commit[i] = level
    else
      retry = (math.min(cost, limit) - level) / rate
    end
    remaining, reset = level, (limit - level) / rate
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local active = redis.call('ZCARD', key)
    if active < limit then
      ok, remaining = 1, limit - active - 1
    else
      reset, retry = 1000, 1000
    end
  end
  if ok == 0 then all = 0 end
  out[#out + 1] = ok
  out[#out + 1] = fmt(remaining)
  out[#out + 1] = fmt(reset)
  out[#out + 1] = fmt(retry)
end
if all == 1 then
  for i, key in ipairs(KEYS) do
    local b = 2 + (i - 1) * 5
    local kind, limit, window = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    if kind == 'requests' then
      redis.call('SET', key, fmt(commit[i]), 'PX', string.format('%d', math.ceil(commit[i] - now) + 1000))
    elseif kind == 'tokens' then
      store(key, commit[i], limit, window)
    else
      redis.call('ZADD', key, fmt(now + lease_ms), lease)
      redis.call('PEXPIRE', key, string.format('%d', lease_ms))
    end
  end
end
return out
"""

# KEYS: token buckets to debit, then concurrency sets to leave. ARGV: count of buckets, lease id,
# then limit, window ms, amount per bucket.
SETTLE = _PRELUDE + """
local n = tonumber(ARGV[1])
for i = 1, n do
  local b = 3 + (i - 1) * 3
  local limit, window, amount = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  store(KEYS[i], math.min(limit, refill(KEYS[i], limit, window) - amount), limit, window)
end
for i = n + 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[2])
end
return 1
"""


class RedisBackend:
    """Shared caps for every proxy process using the same Redis; bounded waits, never a hang."""

    def __init__(self, settings: RedisSettings, lease_seconds: float) -> None:
        self.settings = settings
        self.lease_ms = int(lease_seconds * 1000)
        self.prefix = settings.key_prefix
        self._redis: RedisClient | None = None
        self._acquire: Any = None
        self._settle: Any = None

    def describe(self) -> str:
        return describe(self.settings.url)

    async def start(self) -> None:
        self._redis = RedisClient(self.settings.url, self.settings.timeout_seconds, retries=1,
                                  retry_after=self.settings.retry_after_failure_seconds,
                                  max_connections=self.settings.max_connections)
        # register_script runs EVALSHA and loads the script on NOSCRIPT (a restarted or new server).
        self._acquire = self._redis.client.register_script(ACQUIRE)
        self._settle = self._redis.client.register_script(SETTLE)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
            self._redis = None

    async def acquire(self, checks: Sequence[Check], lease: str) -> list[Outcome]:
        args: list[Any] = [lease, self.lease_ms]
        for c in checks:
            args += [c.kind, c.limit, _ms(c.window), c.burst, repr(float(c.cost))]
        raw = await self._run(self._acquire, [f"{self.prefix}:{c.key}" for c in checks], args)
        return [
            Outcome(int(raw[i * 4]) == 1, c.limit, float(raw[i * 4 + 1]), float(raw[i * 4 + 2]) / 1000,
                    float(raw[i * 4 + 3]) / 1000)
            for i, c in enumerate(checks)
        ]

    async def settle(self, debits: Sequence[tuple[Check, float]], releases: Sequence[Check], lease: str) -> None:
        keys = [f"{self.prefix}:{c.key}" for c, _ in debits] + [f"{self.prefix}:{c.key}" for c in releases]
        args: list[Any] = [len(debits), lease]
        for c, amount in debits:
            args += [c.limit, _ms(c.window), repr(float(amount))]
        await self._run(self._settle, keys, args)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._redis is None:
            raise BackendUnavailable("not started")
        try:
            return await self._redis.run(lambda: script(keys=keys, args=args))
        except RedisUnavailable as exc:
            raise BackendUnavailable(exc.reason) from None


def _ms(seconds: float) -> str:
    return repr(seconds * 1000.0)
