--[[
  Marks an accepted request cancelled (its submitter went away): a worker that has not started it
  completes it without running it; one running a generation stops between tokens (control channel).

  KEYS[1]  request log
  ARGV[1]  seq

  Returns 1 when the request was still in the log, else 0.
]]
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'x' .. ARGV[1], '1')
return 1
