-- A dead letter written off by an operator, atomic: only a report in the dead-letter
-- store, never one that is due, queued or final. Its record moves into its interval's
-- done hash as finish.lua moves a delivered one (state written_off, no platform user),
-- it leaves the dead set, its counter goes up, and one entry with everything it carried
-- and why it was written off is appended to the writeoffs stream, which never expires
-- (the audit record: what was not billed, who decided and why).
--
-- KEYS[1] rep:<start>:<sub> hash   KEYS[2] done:<start> hash   KEYS[3] dead zset
-- KEYS[4] writeoffs stream   KEYS[5] stats hash
-- ARGV: member "<start>:<sub>" (":a<n>" for an amendment), its field in the done hash
--       ("<sub>" or "<sub>:a<n>"), retention seconds of the done hash, the reason,
--       who wrote it off, the report's Idempotency-Key
-- Returns 0 when the report is not a dead letter (nothing changed), else the stream
-- entry's id.
local v = redis.call('HMGET', KEYS[1], 'state', 'bytes_in', 'bytes_out', 'requests', 'attempts', 'unmetered',
  'reason', 'dead_at', 'sealed_at')
if v[1] ~= 'dead' then
  return 0
end
local t = redis.call('TIME')
local at = t[1] .. '.' .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local attempts, unmetered = v[5] or '0', v[6] or '0'
redis.call('HSET', KEYS[2], ARGV[2],
  table.concat({'written_off', v[2], v[3], v[4], attempts, unmetered, at, ''}, ' '))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'reports_written_off', 1)
return redis.call('XADD', KEYS[4], '*',
  'key', ARGV[1], 'idempotency_key', ARGV[6], 'bytes_in', v[2], 'bytes_out', v[3], 'requests', v[4],
  'unmetered', unmetered, 'attempts', attempts, 'sealed_at', v[9] or '', 'dead_at', v[8] or '',
  'dead_reason', v[7] or '', 'written_off_at', at, 'by', ARGV[5], 'reason', ARGV[4])
