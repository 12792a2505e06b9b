-- Reserve a place among the reports in automatic retry, so that all workers
-- together hold at most a bounded number of waiting retry messages.
-- KEYS[1] retrying zset (member -> when its wait ends)
-- ARGV: member, wait ends at (unix s), cap
-- Returns 1 when reserved, 0 when full.
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 1
end
return 0
