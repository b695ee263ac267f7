--[[
  Commit the result of applying (part of) a request: compare-and-set on `version`, then write
  state, tail, text, counters and progress together. Every check runs before the first write,
  because Redis does not roll a script back when it fails half way.

  KEYS[1]   session hash
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
  ARGV[11]  appliedSeq, or '' to leave it
  ARGV[12]  now (ms epoch)
  ARGV[13]  idle TTL in ms

  Returns the new version; error replies "NOTFOUND", "LAYOUT <found>",
  "CONFLICT <stored version>", "STATE <expected bytes> <found bytes>".
]]
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return redis.error_reply('NOTFOUND no such session')
end
local meta = redis.call('HMGET', key, 'layout', 'version', 'stateShape', 'stateDtype')
if meta[1] ~= ARGV[1] then
  return redis.error_reply('LAYOUT ' .. tostring(meta[1]))
end
-- A stale or duplicate writer loaded an older version: it must never overwrite newer state.
if tonumber(meta[2]) ~= tonumber(ARGV[2]) then
  return redis.error_reply('CONFLICT ' .. tostring(meta[2]))
end
-- The state's size is fixed by the session's shape and dtype; refuse anything else so a
-- buggy writer cannot leave a state that load() would have to reject later.
local elem = ({ float32 = 4 })[meta[4]]
if not elem then
  return redis.error_reply('STATE unknown-dtype ' .. tostring(meta[4]))
end
local bytes = elem
for dim in string.gmatch(meta[3] or '', '[^,]+') do
  local n = tonumber(dim)
  if not n then
    return redis.error_reply('STATE bad-shape ' .. tostring(meta[3]))
  end
  bytes = bytes * n
end
if string.len(ARGV[3]) ~= bytes then
  return redis.error_reply('STATE ' .. bytes .. ' ' .. string.len(ARGV[3]))
end

redis.call('HSET', key,
  'state', ARGV[3],
  'tail', ARGV[4],
  'pendingText', ARGV[5],
  'curSeq', ARGV[9],
  'curOffset', ARGV[10],
  'lastUsedAt', ARGV[12])
if ARGV[11] ~= '' then
  redis.call('HSET', key, 'appliedSeq', ARGV[11])
end
redis.call('HINCRBY', key, 'tokensIngested', ARGV[6])
redis.call('HINCRBY', key, 'segmentsCommitted', ARGV[7])
redis.call('HINCRBY', key, 'tokensGenerated', ARGV[8])
local version = redis.call('HINCRBY', key, 'version', 1)
redis.call('PEXPIRE', key, ARGV[13])
return version
