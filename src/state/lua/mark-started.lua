--[[
  Record that a worker started applying request `seq` of a session (startedSeq only ever grows), so
  a request accepted after this is queued to run at once instead of held back behind it
  (accept-request.lua, request-queue.ts). A script so that a deleted session is not re-created as
  a half-formed hash.

  KEYS[1]  session hash
  ARGV[1]  layout this code understands
  ARGV[2]  seq

  Returns startedSeq after the call, or -1 when there is no such session (or another layout).
]]
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 or redis.call('HGET', key, 'layout') ~= ARGV[1] then
  return -1
end
local want = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', key, 'startedSeq') or '0') or 0
if want > cur then
  redis.call('HSET', key, 'startedSeq', want)
  return want
end
return cur
