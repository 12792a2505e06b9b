-- The lease of a followed pod (app/follow.py): renew it with its stream's state, or
-- release it, only while it is still this follower's (a lease that expired and was
-- taken by another follower is left to that one).
--
-- KEYS[1] the lease (follow:<uid>), value "<token> <state>"
-- KEYS[2] the hand-back request (followback:<uid>), set by a probe that could not record
--         a read to the end (app/fetching.py, Fetcher._probe_commits)
-- ARGV: token, state ("busy" or "quiet"; "" releases), time to live (s)
-- Returns 0 when the lease is not this token's; 2 when it was renewed quiet and a probe
-- asked for the pod back (the request is used up: the follower lets the pod go); else 1.
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[3])
if ARGV[2] == 'quiet' and redis.call('DEL', KEYS[2]) == 1 then
  return 2
end
return 1
