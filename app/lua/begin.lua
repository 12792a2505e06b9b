-- One report attempt begins, atomic: take the send lock, read the report, count the
-- attempt. One round trip where there were three (SET NX, HGETALL, HINCRBY).
--
-- KEYS[1] rep:<start>:<sub> hash   KEYS[2] lock:<start>:<sub>
-- KEYS[3] done:<start> hash (delivered detail of the interval, see finish.lua)
-- KEYS[4] init hash (the REPORT_INTERVAL and SCRAPER_ID the ledger's reports are made under)
-- KEYS[5] parked marker: a probe flag (probe.lua) counts only while it is there; once the
--   platform answered since, the flag is dropped and the send gets its automatic retries
-- ARGV: lock token, lock seconds, subdomain, this process's REPORT_INTERVAL, its SCRAPER_ID
-- Returns {"identity", recorded interval, recorded scraper id} when the ledger records
-- others than this process's (its Idempotency-Key would not be the report's: nothing is
-- taken); {"busy"} when another copy holds the lock; {"final", state} (delivered,
-- skipped or dead) or {"missing"} with the lock released; else, the lock taken and the
-- attempt counted, {"go", bytes_in, bytes_out, requests, state, attempts before this
-- one, reason, unmetered, sealed_at ("" when not recorded), probe ("1" when the sweep
-- made it claimable to probe the platform, probe.lua; else "")}.
-- KEYS[1] and KEYS[2] end in the report's member, "<start>:<sub>" or, for an amendment,
-- "<start>:<sub>:a<n>"; ARGV[3] is then "<sub>:a<n>" (its field in the done hash).
local id = redis.call('HMGET', KEYS[4], 'report_interval', 'scraper_id')
if (id[1] and id[1] ~= ARGV[4]) or (id[2] and id[2] ~= ARGV[5]) then
  return {'identity', id[1] or '', id[2] or ''}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then
  return {'busy'}
end
local v = redis.call('HMGET', KEYS[1], 'bytes_in', 'bytes_out', 'requests', 'state', 'attempts', 'reason',
  'unmetered', 'sealed_at', 'probe')
if not v[1] then
  redis.call('DEL', KEYS[2])
  local done = redis.call('HGET', KEYS[3], ARGV[3])
  if done then
    return {'final', string.match(done, '^%S+')}
  end
  return {'missing'}
end
local state = v[4] or 'pending'
if state == 'delivered' or state == 'skipped' or state == 'dead' then
  redis.call('DEL', KEYS[2])
  return {'final', state}
end
local probe = v[9] or ''
if probe ~= '' and redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('HDEL', KEYS[1], 'probe')
  probe = ''
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return {'go', v[1], v[2], v[3], state, v[5] or '0', v[6] or '', v[7] or '0', v[8] or '', probe}
