--[[
  Accept a request into a session's log: the one place a request gets its sequence number. Once this
  returns, the request is durable and will be applied exactly once, in seq order, or the session
  enters its visible failed state (session-log.ts).

  KEYS[1]  session hash
  KEYS[2]  request log
  KEYS[3]  results
  ARGV[1]  layout this code understands
  ARGV[2]  idle TTL in ms
  ARGV[3]  the request (JSON)
  ARGV[4]  client seq ('' for none): a websocket connection's append number, accepted only as the
           session's clientSeq + 1 (compare-and-set), so a resend is never applied twice
  ARGV[5]  '1' when the submitter waits for the result (it is kept in the results hash)

  The log also keeps when the request was accepted ('a<seq>', ms on Redis's clock): a worker's queue
  time and end-to-end latency metrics start there (telemetry/metrics.ts).

  Returns the request's seq; error replies "NOTFOUND", "LAYOUT <found>", "FAILED <failed seq>",
  "CLIENTSEQ <stored client seq>".
]]
-- @include "session"
local err = sessionError(KEYS[1], ARGV[1])
if err then return err end
local key = KEYS[1]
local f = redis.call('HMGET', key, 'status', 'failedSeq', 'clientSeq')
if f[1] == 'failed' then
  return redis.error_reply('FAILED ' .. tostring(f[2]))
end
if ARGV[4] ~= '' then
  local want = tonumber(ARGV[4])
  local stored = num(f[3])
  if stored ~= want - 1 then
    return redis.error_reply('CLIENTSEQ ' .. stored)
  end
  redis.call('HSET', key, 'clientSeq', want)
end
local now = nowMs()
local seq = redis.call('HINCRBY', key, 'acceptedSeq', 1)
redis.call('HSET', KEYS[2], tostring(seq), ARGV[3], 'a' .. seq, now)
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'c' .. seq, ARGV[4])
end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[2], 'w' .. seq, '1')
end
redis.call('HSET', key, 'lastUsedAt', now)
touch(ARGV[2])
return seq
