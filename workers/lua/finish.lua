-- Record a subtask's envelope once (first terminal envelope wins) and, for a race, claim the win.
-- KEYS[1] results hash  KEYS[2] run record hash  KEYS[3] events stream  KEYS[4] winner string
-- ARGV[1] index  ARGV[2] envelope JSON  ARGV[3] status  ARGV[4] ttl seconds
-- ARGV[5] '1' to try to claim the race win  ARGV[6] now  ARGV[7] events maxlen
-- Duration statistics (optional), appended only for a new envelope:
-- KEYS[5] stats counts hash  KEYS[6..] stats sample lists, one per ARGV[10..]
-- ARGV[8] samples kept per list  ARGV[9] stats ttl seconds  ARGV[10..] the samples
-- Returns {new, done, n, won}: new=1 if this envelope was recorded (0: duplicate delivery).
local new = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
local done
if new == 1 then
  done = redis.call('HINCRBY', KEYS[2], 'done', 1)
else
  done = tonumber(redis.call('HGET', KEYS[2], 'done') or '0')
end
local won = 0
if new == 1 and ARGV[5] == '1' then
  if redis.call('SET', KEYS[4], ARGV[1], 'NX', 'EX', ARGV[4]) then
    won = 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if new == 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'type', 'finished', 'index', ARGV[1],
    'status', ARGV[3], 'won', won, 'ts', ARGV[6])
  for i = 6, #KEYS do
    redis.call('LPUSH', KEYS[i], ARGV[i + 4])
    redis.call('LTRIM', KEYS[i], 0, tonumber(ARGV[8]) - 1)
    redis.call('EXPIRE', KEYS[i], ARGV[9])
    redis.call('HINCRBY', KEYS[5], KEYS[i], 1)
  end
  if #KEYS >= 6 then
    redis.call('EXPIRE', KEYS[5], ARGV[9])
  end
end
local n = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
return {new, done, n, won}
