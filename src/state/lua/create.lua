--[[
  Create a session hash, refusing to overwrite an existing one (a random id colliding, or a
  client-chosen id already in use, must never clobber someone's state).

  KEYS[1]  session hash
  KEYS[2]  request log (deleted: a new session starts with none)
  KEYS[3]  results (likewise)
  ARGV[1]  idle TTL in ms
  ARGV[2..] field, value, field, value, ... (the whole record, `layout` included)

  Returns 1; error reply "EXISTS ..." if the key exists.
]]
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  return redis.error_reply('EXISTS session already exists')
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', key, unpack(ARGV, 2))
redis.call('PEXPIRE', key, ARGV[1])
return 1
