--[[
  Hand out the next request sequence number of a session. A script rather than a bare HINCRBY
  because HINCRBY on a missing key would silently create a half-formed session.

  KEYS[1]  session hash
  ARGV[1]  layout this code understands
  ARGV[2]  now (ms epoch)
  ARGV[3]  idle TTL in ms
  ARGV[4]  optional tag field (e.g. a websocket client's seq): a retry with the same tag gets the
           seq it was given before instead of a new one, so a request whose caller died between
           this script and enqueuing it can be re-enqueued under the same job id, exactly once
  ARGV[5]  tag value

  Returns the acceptedSeq (new, or the tagged one); error reply "NOTFOUND" or "LAYOUT <found>".
]]
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return redis.error_reply('NOTFOUND no such session')
end
local layout = redis.call('HGET', key, 'layout')
if layout ~= ARGV[1] then
  return redis.error_reply('LAYOUT ' .. tostring(layout))
end
local tagField, tagValue = ARGV[4], ARGV[5]
if tagField and tagField ~= '' then
  local tagged = redis.call('HGET', key, tagField)
  if tagged then
    local value, seq = string.match(tagged, '^(.*):(%d+)$')
    if value == tagValue then
      return tonumber(seq)
    end
  end
end
local seq = redis.call('HINCRBY', key, 'acceptedSeq', 1)
if tagField and tagField ~= '' then
  redis.call('HSET', key, tagField, tagValue .. ':' .. seq)
end
redis.call('HSET', key, 'lastUsedAt', ARGV[2])
redis.call('PEXPIRE', key, ARGV[3])
return seq
