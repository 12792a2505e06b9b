-- Seal one ended report interval and turn its sums into report records, atomic.
-- Partials that arrive later go to the next unsealed interval (commit.lua).
--
-- KEYS[1] open zset   KEYS[2] sealed zset   KEYS[3] due zset
-- ARGV: prefix, interval start, report interval (s)
-- Returns the subdomains whose reports were created now (empty when already sealed
-- or not ended yet), or {"not_ended"}.
local start = tonumber(ARGV[2])
local ri = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1])
if start + ri > now then
  return {'not_ended'}
end
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return {}
end
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])

local flat = redis.call('HGETALL', ARGV[1] .. ':iv:' .. ARGV[2])
local sums = {}
for i = 1, #flat, 2 do
  local field = flat[i]
  local sub = string.sub(field, 1, -3)
  local kind = string.sub(field, -1)
  sums[sub] = sums[sub] or {i = '0', o = '0', r = '0', u = '0'}
  sums[sub][kind] = flat[i + 1]
end
local created = {}
for sub, v in pairs(sums) do
  local rk = ARGV[1] .. ':rep:' .. ARGV[2] .. ':' .. sub
  if tonumber(v.r) > 0 and redis.call('EXISTS', rk) == 0 then
    redis.call('HSET', rk, 'bytes_in', v.i, 'bytes_out', v.o, 'requests', v.r,
      'state', 'pending', 'attempts', '0', 'sealed_at', tostring(now))
    -- upgraded connections among the requests (<sub>:u): kept beside the report, never sent
    if tonumber(v.u) > 0 then
      redis.call('HSET', rk, 'unmetered', v.u)
    end
    -- score 0: claimable at once
    redis.call('ZADD', KEYS[3], 0, ARGV[2] .. ':' .. sub)
    created[#created + 1] = sub
  end
end
table.sort(created)
return created
