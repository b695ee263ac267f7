--[[
  Commit the result of applying (part of) a request: compare-and-set on `version`, then write
  state, tail, text, counters and progress together. Every check runs before the first write,
  because Redis does not roll a script back when it fails half way.

  KEYS[1]   session hash
  KEYS[2]   request log
  KEYS[3]   results
  ARGV[1]   layout this code understands
  ARGV[2]   expected version (the one the writer loaded)
  ARGV[3]   state: raw little-endian bytes
  ARGV[4]   tail: uint32 LE token ids
  ARGV[5]   pendingText
  ARGV[6]   tokensIngested increment
  ARGV[7]   segmentsCommitted increment
  ARGV[8]   tokensGenerated increment
  ARGV[9]   curSeq
  ARGV[10]  curOffset
  ARGV[11]  appliedSeq, or '' to leave it (the request is done: its log entry goes, its result stays)
  ARGV[12]  idle TTL in ms
  ARGV[13]  lease owner token, or '' for a commit outside a worker's lease (a snapshot import)
  ARGV[14]  lease in ms (extended by the commit)
  ARGV[15]  the request's result (JSON) to keep for its submitter, or ''
  ARGV[16]  results kept: the result of request appliedSeq - this is dropped

  Returns the new version; error replies "NOTFOUND", "LAYOUT <found>", "CONFLICT <stored version>",
  "STATE <expected bytes> <found bytes>", "LEASE <holder>".
]]
-- @include "session"
local err = sessionError(KEYS[1], ARGV[1])
if err then return err end
local key = KEYS[1]
local meta = redis.call('HMGET', key, 'version', 'stateShape', 'stateDtype', 'lease')
-- Only the lease holder writes: a worker that lost its lease (it stalled, another took over) is fenced off.
if ARGV[13] ~= '' and meta[4] ~= ARGV[13] then
  return redis.error_reply('LEASE ' .. tostring(meta[4]))
end
-- A stale or duplicate writer loaded an older version: it must never overwrite newer state.
if tonumber(meta[1]) ~= tonumber(ARGV[2]) then
  return redis.error_reply('CONFLICT ' .. tostring(meta[1]))
end
-- The state's size is fixed by the session's shape and dtype; refuse anything else so a
-- buggy writer cannot leave a state that load() would have to reject later.
local elem = ({ float32 = 4 })[meta[3]]
if not elem then
  return redis.error_reply('STATE unknown-dtype ' .. tostring(meta[3]))
end
local bytes = elem
for dim in string.gmatch(meta[2] or '', '[^,]+') do
  local n = tonumber(dim)
  if not n then
    return redis.error_reply('STATE bad-shape ' .. tostring(meta[2]))
  end
  bytes = bytes * n
end
if string.len(ARGV[3]) ~= bytes then
  return redis.error_reply('STATE ' .. bytes .. ' ' .. string.len(ARGV[3]))
end

local now = nowMs()
redis.call('HSET', key,
  'state', ARGV[3],
  'tail', ARGV[4],
  'pendingText', ARGV[5],
  'curSeq', ARGV[9],
  'curOffset', ARGV[10],
  'lastUsedAt', now)
if ARGV[11] ~= '' then
  local seq = ARGV[11]
  redis.call('HSET', key, 'appliedSeq', seq)
  redis.call('HDEL', KEYS[2], seq, 'c' .. seq, 'w' .. seq, 'g' .. seq, 'x' .. seq, 'a' .. seq)
  if ARGV[15] ~= '' then
    redis.call('HSET', KEYS[3], seq, ARGV[15])
  end
  redis.call('HDEL', KEYS[3], tostring(tonumber(seq) - tonumber(ARGV[16])))
end
if ARGV[13] ~= '' then
  redis.call('HSET', key, 'leaseUntil', now + tonumber(ARGV[14]))
end
redis.call('HINCRBY', key, 'tokensIngested', ARGV[6])
redis.call('HINCRBY', key, 'segmentsCommitted', ARGV[7])
redis.call('HINCRBY', key, 'tokensGenerated', ARGV[8])
local version = redis.call('HINCRBY', key, 'version', 1)
touch(ARGV[12])
return version
