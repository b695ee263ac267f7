-- Shared by the session scripts (expanded where a script says @include "session").

-- nil when KEYS[1] is a session hash of this build's layout, else the error reply to return.
local function sessionError(key, layout)
  if redis.call('EXISTS', key) == 0 then
    return redis.error_reply('NOTFOUND no such session')
  end
  local found = redis.call('HGET', key, 'layout')
  if found ~= layout then
    return redis.error_reply('LAYOUT ' .. tostring(found))
  end
  return nil
end

-- Milliseconds by the Redis server's clock: every worker's lease is measured on one clock.
local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Restarts the idle TTL of a session's keys (hash, log, results): they live and expire together.
local function touch(ttl)
  for i = 1, #KEYS do
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end

local function num(v)
  return tonumber(v or '0') or 0
end
