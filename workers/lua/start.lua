-- Record that a subtask is starting and tell it whether to run.
-- KEYS[1] run record hash      KEYS[2] attempts hash     KEYS[3] run cancel string
-- KEYS[4] task cancel hash     KEYS[5] events stream     KEYS[6] results hash
-- KEYS[7] started-by hash (index -> worker)
-- ARGV[1] index  ARGV[2] now  ARGV[3] worker  ARGV[4] ttl seconds  ARGV[5] events maxlen
-- Returns {attempt, reason}: reason '' means run it; 'unknown-run', 'reported' (a redelivery of
-- a subtask that already has its envelope) or the cancel reason mean do not.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 'unknown-run'}
end
local attempt = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
if redis.call('HEXISTS', KEYS[6], ARGV[1]) == 1 then
  return {attempt, 'reported'}
end
local reason = redis.call('GET', KEYS[3])
if not reason then
  reason = redis.call('HGET', KEYS[4], ARGV[1])
end
if reason then
  return {attempt, reason}
end
redis.call('HSET', KEYS[7], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[7], ARGV[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'type', 'started', 'index', ARGV[1],
  'worker', ARGV[3], 'attempt', attempt, 'ts', ARGV[2])
-- The stream may be new (the server lost it, not the record): it keeps a TTL all the same.
redis.call('EXPIRE', KEYS[5], ARGV[4])
return {attempt, ''}
