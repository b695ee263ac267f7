--[[
  A worker takes a session's lease to apply its accepted requests (session-runner.ts). Only the
  lease holder may commit (commit.lua), so a worker that lost its lease can never write.

  Each lease taken while requests wait counts a start of the head request (appliedSeq + 1); a start
  that finds the session where the last start left it (same curSeq and curOffset: no commit since)
  counts one more attempt of that request, any progress resets the count. Past ARGV[4] attempts the
  session fails visibly: a request that keeps crashing its workers (a poison pill) stops there.
  Requests queued behind the head are never charged.

  KEYS[1]  session hash
  ARGV[1]  layout this code understands
  ARGV[2]  owner token (one per worker turn)
  ARGV[3]  lease in ms
  ARGV[4]  most attempts of one request

  Returns {'ok', attempts}, {'idle'} (nothing to apply), {'busy', ms left on another's lease},
  {'failed', failed seq, 1 when this call failed it}, {'gone'}; error reply "LAYOUT <found>".
]]
-- @include "session"
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return { 'gone' }
end
local err = sessionError(key, ARGV[1])
if err then return err end
local f = redis.call('HMGET', key, 'status', 'failedSeq', 'lease', 'leaseUntil', 'acceptedSeq', 'appliedSeq',
  'curSeq', 'curOffset', 'headSeq', 'headMark', 'headAttempts')
if f[1] == 'failed' then
  return { 'failed', num(f[2]) }
end
local now = nowMs()
local owner = ARGV[2]
if f[3] and f[3] ~= '' and f[3] ~= owner and num(f[4]) > now then
  return { 'busy', num(f[4]) - now }
end
local applied = num(f[6])
if applied >= num(f[5]) then
  redis.call('HDEL', key, 'lease', 'leaseUntil')
  return { 'idle' }
end
local head = applied + 1
local mark = num(f[7]) .. ':' .. num(f[8])
local attempts = 1
if num(f[9]) == head and f[10] == mark then
  attempts = num(f[11]) + 1
end
if attempts > tonumber(ARGV[4]) then
  redis.call('HSET', key, 'status', 'failed', 'failedSeq', head, 'failCode', 'attempts_exhausted',
    'failMessage', 'request ' .. head .. ' was started ' .. (attempts - 1) .. ' times without progress (workers crashed or failed on it)',
    'failedAt', now)
  redis.call('HDEL', key, 'lease', 'leaseUntil')
  return { 'failed', head, 1 }
end
redis.call('HSET', key, 'lease', owner, 'leaseUntil', now + tonumber(ARGV[3]),
  'headSeq', head, 'headMark', mark, 'headAttempts', attempts)
return { 'ok', attempts }
