-- A final answer (delivered or skipped) recorded, atomic, in one round trip: the report's
-- record moves from its own hash into one field of its interval's done hash (compact,
-- expiring REPORT_RETENTION after the interval's last delivery), the report leaves the
-- due and retrying sets, its counter goes up, and the send lock is released if this
-- attempt still holds it. Safe to run twice (a retry after a lost answer): a report
-- already moved is left alone.
--
-- KEYS[1] rep:<start>:<sub> hash   KEYS[2] done:<start> hash   KEYS[3] due zset
-- KEYS[4] retrying zset   KEYS[5] stats hash   KEYS[6] lock:<start>:<sub>   KEYS[7] parked marker
-- KEYS[8] dead zset: a 2xx that comes after another copy (whose send lock had expired)
--   dead-lettered the report is the platform's answer: it leaves the dead-letter store
-- KEYS[9] probe zset (probe.lua): the platform answers, so no probe is needed, and a
--   Retry-After it gave before no longer holds one back
-- ARGV: member "<start>:<sub>", subdomain, state, platform user id, retention seconds,
--       lock token ("" = none to release)
-- The done field: "<state> <bytes_in> <bytes_out> <requests> <attempts> <unmetered>
-- <delivered at, unix s> <user id>" (the user id last: it may hold anything).
-- Returns 1 when a report was parked since the platform's last success (the caller then
-- runs wake.lua), else 0.
local v = redis.call('HMGET', KEYS[1], 'bytes_in', 'bytes_out', 'requests', 'attempts', 'unmetered')
if v[1] then
  local t = redis.call('TIME')
  local at = t[1] .. '.' .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  redis.call('HSET', KEYS[2], ARGV[2],
    table.concat({ARGV[3], v[1], v[2], v[3], v[4] or '0', v[5] or '0', at, ARGV[4]}, ' '))
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[8], ARGV[1])
  redis.call('HINCRBY', KEYS[5], 'reports_' .. ARGV[3], 1)
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[6]) == ARGV[6] then
  redis.call('DEL', KEYS[6])
end
redis.call('DEL', KEYS[9])
return redis.call('EXISTS', KEYS[7])
