--[[
  Read a whole session and mark it used: bumps lastUsedAt and restarts the idle TTL of its keys in
  the same step, so a session being read cannot expire between the read and the refresh.

  KEYS[1]  session hash
  KEYS[2]  request log
  KEYS[3]  results
  ARGV[1]  layout this code understands
  ARGV[2]  idle TTL in ms

  Returns HGETALL's flat [field, value, ...] list, or nil if there is no such session;
  error reply "LAYOUT <found>" (nothing touched) if the hash has another layout.
]]
-- @include "session"
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return false
end
local err = sessionError(key, ARGV[1])
if err then return err end
redis.call('HSET', key, 'lastUsedAt', nowMs())
touch(ARGV[2])
return redis.call('HGETALL', key)
