-- Renew the leases of reports whose messages a live worker holds (received and waiting
-- in its prefetch, waiting for a retry's countdown, or running): each one still queued
-- gets score now + lease in the due set. The worker's main process renews them every
-- third of the lease; a worker that dies stops renewing, so its reports become
-- claimable by the sweep one lease later, not after the claim's longer lease.
-- Reports in any other state (delivered, parked, pending) are left alone.
--
-- KEYS[1] due zset
-- ARGV: prefix, lease seconds, then members "<start>:<sub>"
-- Returns how many leases were renewed.
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(ARGV[2])
local renewed = 0
for i = 3, #ARGV do
  local m = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], m) and redis.call('HGET', ARGV[1] .. ':rep:' .. m, 'state') == 'queued' then
    redis.call('ZADD', KEYS[1], until_, m)
    renewed = renewed + 1
  end
end
return renewed
