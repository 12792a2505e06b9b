-- The lease of a followed pod (app/follow.py): renew it with its stream's state, or
-- release it, only while it is still this follower's (a lease that expired and was
-- taken by another follower is left to that one).
--
-- KEYS[1] the lease (follow:<uid>), value "<token> <state> <Redis time of this renewal, s>"
-- ARGV: token, state ("busy" or "quiet"; "" releases), time to live (s)
-- Returns 1 when the lease was this token's, else 0.
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%s %s %d.%06d', ARGV[1], ARGV[2], t[1], t[2]), 'EX', ARGV[3])
end
return 1
