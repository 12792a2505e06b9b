-- The platform answered with success: reports parked after failed attempts become
-- claimable now instead of after their backoff (up to REPORT_DUE_MAX_DELAY). Runs only
-- when a report was parked since the last wake (the marker, set by Ledger.park), so a
-- success costs one DEL when nothing is parked.
--
-- KEYS[1] due zset   KEYS[2] parked marker
-- ARGV: prefix
-- Returns how many reports were woken.
if redis.call('DEL', KEYS[2]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1])
local woken = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE')) do
  local rk = ARGV[1] .. ':rep:' .. m
  if redis.call('HGET', rk, 'state') == 'due' then
    redis.call('ZADD', KEYS[1], now, m)
    redis.call('HSET', rk, 'next_at', tostring(now))
    woken = woken + 1
  end
end
return woken
