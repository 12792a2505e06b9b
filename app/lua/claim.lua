-- Claim reports for sending: a report in the due set whose time has come is given
-- a lease (its score moves to now + lease) and marked queued. Only the claimer
-- enqueues it, so the same report is not enqueued twice while a message for it is
-- alive; a lease that runs out (lost message, dead worker) makes it claimable again.
--
-- KEYS[1] due zset
-- ARGV: prefix, lease seconds, then members "<start>:<sub>" (none: take the due ones,
--       up to ARGV[3] of them)
-- Returns the claimed members.
local lease = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1])
local members = {}
if #ARGV == 3 and string.sub(ARGV[3], 1, 1) == '#' then
  members = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(string.sub(ARGV[3], 2)))
else
  for i = 3, #ARGV do members[#members + 1] = ARGV[i] end
end
local claimed = {}
for _, m in ipairs(members) do
  local score = redis.call('ZSCORE', KEYS[1], m)
  if score and tonumber(score) <= now then
    redis.call('ZADD', KEYS[1], now + lease, m)
    redis.call('HSET', ARGV[1] .. ':rep:' .. m, 'state', 'queued')
    claimed[#claimed + 1] = m
  end
end
return claimed
