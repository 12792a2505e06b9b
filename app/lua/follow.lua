-- The lease of a followed pod (app/follow.py): renew it with its stream's state, or
-- release it, only while it is still this follower's (a lease that expired and was
-- taken by another follower is left to that one).
--
-- KEYS[1] the lease (follow:<uid>), value "<token> <Redis time, s> <state>": the time the
--         follower took before it judged the state (so the state held at that time); the
--         state last, where a reader of "<token> <state>" (the previous form, and the
--         lease as first taken) finds it too
-- ARGV: token, state ("busy" or "quiet"; "" releases), time to live (s), Redis time (s)
-- Returns 1 when the lease was this token's, else 0.
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[4] .. ' ' .. ARGV[2], 'EX', ARGV[3])
end
return 1
