-- One read's commit, atomic: compare the cursor, add each line's counts to the report
-- interval that holds its stamp (several intervals from one read), move the cursor,
-- record the read for the watermark, add to the counters (docs/design.md, "Sealing").
--
-- KEYS[1] init record   KEYS[2] cursors hash   KEYS[3] stats hash
-- KEYS[4] open zset     KEYS[5] sealed zset    KEYS[6] unmetered hash (sub -> count)
-- KEYS[7] due zset      KEYS[8] sealedto (string: every interval starting before it is sealed)
-- KEYS[9] reads hash    KEYS[10] readfail hash  KEYS[11] history zset
-- ARGV: prefix, cursor field, expected cursor's SHA-1 in hex ("" = none yet), new cursor,
--       report interval (s), retention (s), read record's source ("" = no record), read record
--       ("<marker> <end_at or -> <high_ns>", see Ledger.read_record), p parts, then p x (interval start, n, n x (sub, bytes_in, bytes_out, requests),
--       k, k x (sub, upgraded connections)), then m counters, m x (name, increment)
-- A part whose interval is sealed (before sealedto, in the sealed zset, or compacted into
-- the history) becomes one amendment report per subdomain, rep:<start>:<sub>:a<n>, n from
-- HINCRBY aseq:<start> (never reused: aseq never expires, since a later INTERVAL_RETENTION
-- can make the interval take amendments again after any expiry set now). A part
-- whose interval ended more than the retention ago is not reported: its requests are
-- counted as lines_expired.
-- Returns {"ok", interval starts written (comma-separated), amendments made, requests
--         expired} | {"conflict", current cursor's SHA-1 ("" = none)} | {"noledger", ""}
--         | {"overflow", subdomain}
-- A cursor holds the fingerprints of a window of lines (tens of KB on a busy pod), so
-- the compare is on digests: the blob goes in once (the new cursor), never back out.
-- Interval and report keys are built here: this needs a single Redis, not a cluster.
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

local prefix = ARGV[1]
local ri = tonumber(ARGV[5])
local retention = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1])
local sealedto = tonumber(redis.call('GET', KEYS[8]) or '0')

-- Walk the parts once to check (a script is not rolled back on error), once to write.
local parts = {}
local i = 10
for _ = 1, tonumber(ARGV[9]) do
  local part = {start = tonumber(ARGV[i]), subs = {}, up = {}}
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n do
    part.subs[#part.subs + 1] = {ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]}
    i = i + 4
  end
  local k = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, k do
    part.up[ARGV[i]] = ARGV[i + 1]
    i = i + 2
  end
  local s = part.start
  if s + ri <= now - retention then
    part.kind = 'expired'
  elseif s < sealedto or redis.call('ZSCORE', KEYS[5], tostring(s))
      or redis.call('ZCOUNT', KEYS[11], s, s) > 0 then
    part.kind = 'late'
  else
    part.kind = 'open'
  end
  local key = prefix .. ':iv:' .. s
  for _, v in ipairs(part.subs) do
    for j = 2, 4 do
      local have = 0
      if part.kind == 'open' then
        have = tonumber(redis.call('HGET', key, v[1] .. ':' .. ({'', 'i', 'o', 'r'})[j]) or '0')
      end
      if have + tonumber(v[j]) > MAX then
        return {'overflow', v[1]}
      end
    end
  end
  parts[#parts + 1] = part
end
local counters_at = i

local written = {}
local amendments = 0
local expired = 0
for _, part in ipairs(parts) do
  local s = tostring(part.start)
  if part.kind == 'expired' then
    for _, v in ipairs(part.subs) do expired = expired + tonumber(v[4]) end
  elseif part.kind == 'open' then
    local key = prefix .. ':iv:' .. s
    for _, v in ipairs(part.subs) do
      redis.call('HINCRBY', key, v[1] .. ':i', v[2])
      redis.call('HINCRBY', key, v[1] .. ':o', v[3])
      redis.call('HINCRBY', key, v[1] .. ':r', v[4])
      local u = part.up[v[1]]
      if u and tonumber(u) > 0 then
        redis.call('HINCRBY', key, v[1] .. ':u', u)
        redis.call('HINCRBY', KEYS[6], v[1], u)
      end
    end
    if #part.subs > 0 then
      redis.call('ZADD', KEYS[4], part.start, s)
      written[#written + 1] = s
    end
  else
    -- Sealed: an amendment per subdomain, never a change to a report already made.
    local seq = prefix .. ':aseq:' .. s
    for _, v in ipairs(part.subs) do
      if tonumber(v[4]) > 0 then
        local n = redis.call('HINCRBY', seq, v[1], 1)
        local member = s .. ':' .. v[1] .. ':a' .. n
        local rk = prefix .. ':rep:' .. member
        redis.call('HSET', rk, 'bytes_in', v[2], 'bytes_out', v[3], 'requests', v[4],
          'state', 'pending', 'attempts', '0', 'sealed_at', tostring(now))
        local u = part.up[v[1]]
        if u and tonumber(u) > 0 then
          redis.call('HSET', rk, 'unmetered', u)
          redis.call('HINCRBY', KEYS[6], v[1], u)
        end
        redis.call('ZADD', KEYS[7], 0, member)
        amendments = amendments + 1
      end
    end
    -- The sequence never expires: an expiry from the retention in force now would let an
    -- operator's longer INTERVAL_RETENTION reuse a<1> (the platform dedupes it: unbilled).
    -- A key made by an earlier build with an expiry loses it here.
    redis.call('PERSIST', seq)
    written[#written + 1] = s
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])

if ARGV[7] ~= '' then
  -- The read record: the latest read start that reached the end of this log stays.
  local marker, endat, high = string.match(ARGV[8], '^(%S*) (%S+) (%d+)$')
  local old = redis.call('HGET', KEYS[9], ARGV[7])
  if old then
    local om, oe = string.match(old, '^(%S*) (%S+) %d+$')
    if om == marker and oe ~= '-' and (endat == '-' or tonumber(oe) > tonumber(endat)) then
      endat = oe
    end
  end
  redis.call('HSET', KEYS[9], ARGV[7], marker .. ' ' .. endat .. ' ' .. high)
  redis.call('HDEL', KEYS[10], ARGV[7])
end

local m = tonumber(ARGV[counters_at])
local function add(name, inc)
  -- a monitoring counter about to overflow starts again rather than fail the script
  if tonumber(redis.call('HGET', KEYS[3], name) or '0') + tonumber(inc) > MAX then
    redis.call('HSET', KEYS[3], name, inc)
  else
    redis.call('HINCRBY', KEYS[3], name, inc)
  end
end
for j = 0, m - 1 do
  add(ARGV[counters_at + 1 + 2 * j], ARGV[counters_at + 2 + 2 * j])
end
if amendments > 0 then add('amendments', amendments) end
if expired > 0 then add('lines_expired', expired) end
return {'ok', table.concat(written, ','), tostring(amendments), tostring(expired)}
