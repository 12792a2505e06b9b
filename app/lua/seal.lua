-- Seal report intervals up to a mark, atomic: the mark "sealed up to" moves forward
-- (never back), and every interval with counts that starts before it is sealed: its sums
-- become report records (docs/design.md, "Sealing"). The mark is the watermark's decision
-- (app/watermark.py); a line that arrives later for a sealed interval becomes an
-- amendment (commit.lua), never a change to these reports.
--
-- KEYS[1] open zset   KEYS[2] sealed zset   KEYS[3] due zset   KEYS[4] sealedto string
-- ARGV: prefix, mark (an interval boundary, unix s), report interval (s)
-- Returns {"not_ended"} when the mark is later than now (Redis TIME); else the mark before
-- this call, then the members "<start>:<sub>" of the reports created now.
local mark = tonumber(ARGV[2])
local ri = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1])
if mark > now then
  return {'not_ended'}
end
local before = tonumber(redis.call('GET', KEYS[4]) or '0')
if mark > before then
  redis.call('SET', KEYS[4], tostring(mark))
end
local out = {tostring(before)}
local starts = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. mark)
for _, s in ipairs(starts) do
  redis.call('ZREM', KEYS[1], s)
  if not redis.call('ZSCORE', KEYS[2], s) then
    redis.call('ZADD', KEYS[2], now, s)
    local flat = redis.call('HGETALL', ARGV[1] .. ':iv:' .. s)
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
      local rk = ARGV[1] .. ':rep:' .. s .. ':' .. sub
      if tonumber(v.r) > 0 and redis.call('EXISTS', rk) == 0 then
        redis.call('HSET', rk, 'bytes_in', v.i, 'bytes_out', v.o, 'requests', v.r,
          'state', 'pending', 'attempts', '0', 'sealed_at', tostring(now))
        -- upgraded connections among the requests (<sub>:u): kept beside the report, never sent
        if tonumber(v.u) > 0 then
          redis.call('HSET', rk, 'unmetered', v.u)
        end
        -- score 0: claimable at once
        redis.call('ZADD', KEYS[3], 0, s .. ':' .. sub)
        created[#created + 1] = s .. ':' .. sub
      end
    end
    table.sort(created)
    for _, m in ipairs(created) do out[#out + 1] = m end
  end
end
return out
