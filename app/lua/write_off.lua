-- A dead letter written off by an operator, atomic: only a report in the dead-letter
-- store, never one that is due, queued or final. One entry with everything it carried
-- and why it was written off is appended to the writeoffs stream, which never expires
-- (the audit record: what was not billed, who decided and why); its record moves into
-- its interval's done hash as finish.lua moves a delivered one (state written_off, no
-- platform user), it leaves the dead set, and its counter goes up.
--
-- KEYS[1] rep:<start>:<sub> hash   KEYS[2] done:<start> hash   KEYS[3] dead zset
-- KEYS[4] writeoffs stream   KEYS[5] stats hash
-- ARGV: member "<start>:<sub>" (":a<n>" for an amendment), its field in the done hash
--       ("<sub>" or "<sub>:a<n>"), retention seconds of the done hash, the reason,
--       who wrote it off, the report's Idempotency-Key ("" when unknown), "1" to take
--       only a dead letter the platform refused for good (below), "0" to take any
-- Returns 0 when the report is not a dead letter (nothing changed); -1 when it is one the
-- platform did not refuse for good and ARGV[7] is "1" (nothing changed); -2 when what the dead
-- set holds is stale, left by an earlier version: a member whose record is gone (a 2xx
-- after the dead-lettering), or a record without its amounts whose interval's done hash
-- has the report's final answer (a dead-letter write after the delivery); the stale
-- entry is removed and nothing is written off; else the stream entry's id. Every key's
-- type is checked before the first write: a script that fails half-way keeps the writes
-- it made, and a write-off must never happen without its audit entry, nor an audit entry
-- without its write-off.
local v = redis.call('HMGET', KEYS[1], 'state', 'bytes_in', 'bytes_out', 'requests', 'attempts', 'unmetered',
  'reason', 'dead_at', 'sealed_at')
if v[1] ~= 'dead' then
  if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
    return -2  -- no record left, yet in the dead set (a late 2xx, by an earlier version): stale
  end
  return 0
end
local types = {{KEYS[2], 'hash'}, {KEYS[3], 'zset'}, {KEYS[4], 'stream'}, {KEYS[5], 'hash'}}
for _, kt in ipairs(types) do
  local t = redis.call('TYPE', kt[1])['ok']
  if t ~= 'none' and t ~= kt[2] then
    return redis.error_reply('WRONGTYPE ' .. kt[1] .. ' is a ' .. t .. ', not a ' .. kt[2] .. ': nothing written off')
  end
end
if not v[2] and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return -2
end
-- Refused for good: a 4xx other than 401 and 403 ("rejected: HTTP 4xx..."). A 401, a 403
-- or a redirect (a wrong secret or URL) and a REPORT_MAX_AGE expiry may still be
-- delivered by a replay once the cause is fixed.
local why = v[7] or ''
if ARGV[7] == '1' and (not string.match(why, '^rejected: HTTP 4%d%d') or string.match(why, '^rejected: HTTP 40[13]')) then
  return -1
end
local t = redis.call('TIME')
local at = t[1] .. '.' .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local attempts, unmetered = v[5] or '0', v[6] or '0'
-- A record without its amounts (a dead-letter write that landed after the report was
-- finished, by an earlier version): settled, its amounts recorded as unknown ('').
local id = redis.call('XADD', KEYS[4], '*',
  'key', ARGV[1], 'idempotency_key', ARGV[6], 'bytes_in', v[2] or '', 'bytes_out', v[3] or '',
  'requests', v[4] or '', 'unmetered', unmetered, 'attempts', attempts, 'sealed_at', v[9] or '',
  'dead_at', v[8] or '', 'dead_reason', v[7] or '', 'written_off_at', at, 'by', ARGV[5], 'reason', ARGV[4])
if v[2] then
  redis.call('HSET', KEYS[2], ARGV[2],
    table.concat({'written_off', v[2], v[3], v[4], attempts, unmetered, at, ''}, ' '))
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'reports_written_off', 1)
return id
