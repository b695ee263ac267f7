--[[
  The session enters its failed state at request `seq` (its head): nothing more is applied until the
  owner resets it (reset.lua); GET shows why, and new requests are refused.

  KEYS[1]  session hash
  ARGV[1]  owner token of the lease holder that saw the failure
  ARGV[2]  seq of the failed request
  ARGV[3]  error code
  ARGV[4]  message

  Returns 1, or 0 when there is no such session or it has failed already; error reply
  "LEASE <holder>" when the caller does not hold the lease.
]]
-- @include "session"
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return 0
end
local f = redis.call('HMGET', key, 'lease', 'status')
if f[2] == 'failed' then
  return 0
end
if f[1] ~= ARGV[1] then
  return redis.error_reply('LEASE ' .. tostring(f[1]))
end
redis.call('HSET', key, 'status', 'failed', 'failedSeq', ARGV[2], 'failCode', ARGV[3], 'failMessage', ARGV[4],
  'failedAt', nowMs())
redis.call('HDEL', key, 'lease', 'leaseUntil')
return 1
