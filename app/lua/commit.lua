-- One fetch's commit, atomic: compare the cursor, add the partial counts to the
-- open report interval, move the cursor, add to the counters.
--
-- KEYS[1] init record   KEYS[2] cursors hash   KEYS[3] stats hash
-- KEYS[4] open zset     KEYS[5] sealed zset    KEYS[6] unmetered hash (sub -> count)
-- ARGV: prefix, cursor field, expected cursor's SHA-1 in hex ("" = none yet), new cursor,
--       report interval (s), n subdomains, then n x (sub, bytes_in, bytes_out, requests),
--       then m counters, then m x (name, increment),
--       then k (optional, 0 if absent), then k x (sub, upgraded connections): subdomains
--       of the n above whose requests include upgraded connections; added as <sub>:u to
--       the interval (only when non-zero) and to the unmetered hash
-- Returns {"ok", interval start} | {"conflict", current cursor's SHA-1 ("" = none)}
--         | {"noledger", ""} | {"overflow", subdomain}
-- A cursor holds the fingerprints of a window of lines (tens of KB on a busy pod), so
-- the compare is on digests: the blob goes in once (the new cursor), never back out.
-- Interval keys are built here (the interval is chosen from TIME inside the
-- script): this needs a single Redis, not a cluster.
local MAX = 9.2e18  -- below 2^63 by far more than a double's error at that size

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'noledger', ''}
end
local current = redis.call('HGET', KEYS[2], ARGV[2]) or ''
local digest = ''
if current ~= '' then
  digest = redis.sha1hex(current)
end
if digest ~= ARGV[3] then
  return {'conflict', digest}
end

local ri = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1])
local start = now - (now % ri)
-- A sealed interval takes nothing more: the partial goes to the first unsealed one.
while redis.call('ZSCORE', KEYS[5], tostring(start)) do
  start = start + ri
end
local key = ARGV[1] .. ':iv:' .. start

local n = tonumber(ARGV[6])
-- Check before writing: a Redis script is not rolled back on error.
for j = 0, n - 1 do
  local i = 7 + 4 * j
  local sub = ARGV[i]
  for k, suffix in ipairs({':i', ':o', ':r'}) do
    local have = tonumber(redis.call('HGET', key, sub .. suffix) or '0')
    if have + tonumber(ARGV[i + k]) > MAX then
      return {'overflow', sub}
    end
  end
end
local c = 7 + 4 * n
local m = tonumber(ARGV[c])
local u = c + 1 + 2 * m
local nu = tonumber(ARGV[u] or '0')
for j = 0, n - 1 do
  local i = 7 + 4 * j
  local sub = ARGV[i]
  redis.call('HINCRBY', key, sub .. ':i', ARGV[i + 1])
  redis.call('HINCRBY', key, sub .. ':o', ARGV[i + 2])
  redis.call('HINCRBY', key, sub .. ':r', ARGV[i + 3])
end
if n > 0 then
  redis.call('ZADD', KEYS[4], start, tostring(start))
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])

-- Upgraded connections: at most one per request, so never beyond the requests checked above.
for j = 0, nu - 1 do
  local sub, inc = ARGV[u + 1 + 2 * j], ARGV[u + 2 + 2 * j]
  if tonumber(inc) > 0 then
    redis.call('HINCRBY', key, sub .. ':u', inc)
    redis.call('HINCRBY', KEYS[6], sub, inc)
  end
end

for j = 0, m - 1 do
  local name, inc = ARGV[c + 1 + 2 * j], ARGV[c + 2 + 2 * j]
  -- a monitoring counter about to overflow starts again rather than fail the script
  if tonumber(redis.call('HGET', KEYS[3], name) or '0') + tonumber(inc) > MAX then
    redis.call('HSET', KEYS[3], name, inc)
  else
    redis.call('HINCRBY', KEYS[3], name, inc)
  end
end
return {'ok', tostring(start)}
