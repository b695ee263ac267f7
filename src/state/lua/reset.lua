--[[
  The owner resets a failed session. 'retry': the failed request is tried again (its attempts count
  from zero). 'drop': the failed request and every later one are discarded. What the failed request
  committed before it failed stays in the memory (curOffset says how much); the client seq goes back
  to just before the first discarded websocket append, so the client resends from last_seq + 1.

  KEYS[1]  session hash
  KEYS[2]  request log
  KEYS[3]  results
  ARGV[1]  layout this code understands
  ARGV[2]  'retry' or 'drop'
  ARGV[3]  idle TTL in ms

  Returns {first dropped seq, last dropped seq} (none dropped for retry: {0, 0}); error replies
  "NOTFOUND", "LAYOUT <found>", "NOTFAILED".
]]
-- @include "session"
local err = sessionError(KEYS[1], ARGV[1])
if err then return err end
local key = KEYS[1]
local f = redis.call('HMGET', key, 'status', 'failedSeq', 'acceptedSeq')
if f[1] ~= 'failed' then
  return redis.error_reply('NOTFAILED the session has not failed')
end
redis.call('HDEL', key, 'status', 'failedSeq', 'failCode', 'failMessage', 'failedAt', 'headSeq', 'headMark',
  'headAttempts', 'lease', 'leaseUntil')
local from, to = 0, 0
if ARGV[2] == 'drop' then
  from, to = num(f[2]), num(f[3])
  local client = nil
  for k = from, to do
    local c = redis.call('HGET', KEYS[2], 'c' .. k)
    if c and not client then client = tonumber(c) end
    redis.call('HDEL', KEYS[2], tostring(k), 'c' .. k, 'w' .. k, 'g' .. k, 'x' .. k, 'a' .. k)
  end
  redis.call('HSET', key, 'appliedSeq', to, 'curSeq', to, 'curOffset', 0, 'droppedFrom', from, 'droppedTo', to)
  if client then
    redis.call('HSET', key, 'clientSeq', client - 1)
  end
end
touch(ARGV[3])
return { from, to }
