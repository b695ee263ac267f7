--[[
  The lease holder extends its lease (session-runner.ts renews while it works).

  KEYS[1]  session hash
  ARGV[1]  owner token
  ARGV[2]  lease in ms

  Returns 1, or 0 when the lease is not the caller's (lost: it must stop).
]]
-- @include "session"
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'leaseUntil', nowMs() + tonumber(ARGV[2]))
return 1
