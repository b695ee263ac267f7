--[[
  The lease holder lets go of a session, unless requests were accepted meanwhile: then it keeps
  the lease and applies them (so none waits for a new job).

  KEYS[1]  session hash
  ARGV[1]  owner token
  ARGV[2]  '1' to release even with requests left (shutdown: another worker takes them)

  Returns 1 (released, or no such session), 0 (requests left: still the caller's), -1 (not the
  caller's lease).
]]
-- @include "session"
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return 1
end
local f = redis.call('HMGET', key, 'lease', 'status', 'acceptedSeq', 'appliedSeq')
if f[1] ~= ARGV[1] then
  return -1
end
if ARGV[2] ~= '1' and f[2] ~= 'failed' and num(f[4]) < num(f[3]) then
  return 0
end
redis.call('HDEL', key, 'lease', 'leaseUntil')
return 1
