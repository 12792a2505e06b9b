-- A probe of the platform, as a circuit breaker's half-open state: when reports were
-- parked and nothing succeeded since (the parked marker), and the probe time has come
-- (the last park's time + REPORT_PROBE_INTERVAL, and no earlier than a Retry-After the
-- platform gave: Ledger.park, Ledger.delay_probe), the parked report due soonest is made
-- claimable now, marked as a probe (its send makes one attempt: a failure parks it again
-- at once, Reporter._retry_or_park), and the next probe is one interval later. Its
-- success runs wake.lua, which makes every parked report due. Without it a report parked
-- after the platform's last success waits its own backoff (up to REPORT_DUE_MAX_DELAY)
-- when nothing else is sent to show the platform answers.
--
-- KEYS[1] due zset   KEYS[2] parked marker   KEYS[3] probe zset (member "next" -> when)
-- KEYS[4] stats hash
-- ARGV: prefix, probe interval seconds, marker TTL seconds
-- Returns the member made claimable, or false.
if redis.call('EXISTS', KEYS[2]) == 0 then
  return false
end
local t = redis.call('TIME')
local now = tonumber(t[1])  -- whole seconds, as claim.lua compares the due set's scores
local exact = now + tonumber(t[2]) / 1000000  -- as Ledger.park set the probe time
local at = redis.call('ZSCORE', KEYS[3], 'next')
if at and tonumber(at) > exact then
  return false
end
-- Members after now are parked (state due) or queued (a lease): the first parked one,
-- looked for among the next 1000. Queued ones sort among them by their lease's end;
-- when 1000 come first, those reports are being sent and each of their answers says
-- whether the platform answers, so no probe is needed this time.
local found = false
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE', 'LIMIT', 0, 1000)) do
  local rk = ARGV[1] .. ':rep:' .. m
  if redis.call('HGET', rk, 'state') == 'due' then
    redis.call('ZADD', KEYS[1], now, m)
    redis.call('HSET', rk, 'next_at', tostring(now), 'probe', '1')
    redis.call('HINCRBY', KEYS[4], 'reports_probed', 1)
    found = m
    break
  end
end
redis.call('ZADD', KEYS[3], exact + tonumber(ARGV[2]), 'next')
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
return found
