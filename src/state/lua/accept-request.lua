--[[
  Hand out the next request sequence number of a session. A script rather than a bare HINCRBY
  because HINCRBY on a missing key would silently create a half-formed session.

  KEYS[1]  session hash
  ARGV[1]  layout this code understands
  ARGV[2]  now (ms epoch)
  ARGV[3]  idle TTL in ms

  Returns the new acceptedSeq; error reply "NOTFOUND" or "LAYOUT <found>".
]]
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return redis.error_reply('NOTFOUND no such session')
end
local layout = redis.call('HGET', key, 'layout')
if layout ~= ARGV[1] then
  return redis.error_reply('LAYOUT ' .. tostring(layout))
end
local seq = redis.call('HINCRBY', key, 'acceptedSeq', 1)
redis.call('HSET', key, 'lastUsedAt', ARGV[2])
redis.call('PEXPIRE', key, ARGV[3])
return seq
