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

  Returns {acceptedSeq (new, or the tagged one), the highest seq started or applied so far}: the
  request's predecessor has started when the second is >= acceptedSeq - 1 (then it is queued to run
  now, else held back until its predecessor starts: request-queue.ts). Error reply "NOTFOUND" or
  "LAYOUT <found>".
]]
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return redis.error_reply('NOTFOUND no such session')
end
local layout = redis.call('HGET', key, 'layout')
if layout ~= ARGV[1] then
  return redis.error_reply('LAYOUT ' .. tostring(layout))
end
local function started()
  local f = redis.call('HMGET', key, 'startedSeq', 'appliedSeq')
  return math.max(tonumber(f[1] or '0') or 0, tonumber(f[2] or '0') or 0)
end
local tagField, tagValue = ARGV[4], ARGV[5]
if tagField and tagField ~= '' then
  local tagged = redis.call('HGET', key, tagField)
  if tagged then
    local value, seq = string.match(tagged, '^(.*):(%d+)$')
    if value == tagValue then
      return { tonumber(seq), started() }
    end
  end
end
local seq = redis.call('HINCRBY', key, 'acceptedSeq', 1)
if tagField and tagField ~= '' then
  redis.call('HSET', key, tagField, tagValue .. ':' .. seq)
end
redis.call('HSET', key, 'lastUsedAt', ARGV[2])
redis.call('PEXPIRE', key, ARGV[3])
return { seq, started() }
