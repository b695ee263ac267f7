--[[
  Read a whole session and mark it used: bumps lastUsedAt and restarts the idle TTL in the same
  step, so a session being read cannot expire between the read and the refresh.

  KEYS[1]  session hash
  ARGV[1]  layout this code understands
  ARGV[2]  now (ms epoch)
  ARGV[3]  idle TTL in ms

  Returns HGETALL's flat [field, value, ...] list, or nil if there is no such session;
  error reply "LAYOUT <found>" (nothing touched) if the hash has another layout.
]]
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return false
end
local layout = redis.call('HGET', key, 'layout')
if layout ~= ARGV[1] then
  return redis.error_reply('LAYOUT ' .. tostring(layout))
end
redis.call('HSET', key, 'lastUsedAt', ARGV[2])
redis.call('PEXPIRE', key, ARGV[3])
return redis.call('HGETALL', key)
