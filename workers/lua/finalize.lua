-- End a run exactly once: the first finaliser's RunResult stands.
-- KEYS[1] result string  KEYS[2] run record hash  KEYS[3] done stream  KEYS[4] events stream
-- ARGV[1] RunResult JSON  ARGV[2] final status  ARGV[3] now  ARGV[4] ttl seconds
-- KEYS[5] open-run deadlines sorted set  KEYS[6] payloads hash (kept only while open)
-- ARGV[5] events maxlen  ARGV[6] run id
-- KEYS[7] results hash  ARGV[7] '1' when the result leaves the envelopes in the results hash
-- (every subtask reported: the hash is complete and, first envelope per index winning, final)
-- Returns 1 if this call ended the run, 0 if it had already ended.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[4]) then
  return 0
end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[2], 'status', ARGV[2], 'finished_at', ARGV[3], 'results_in', 'hash')
  redis.call('EXPIRE', KEYS[7], ARGV[4])
else
  redis.call('HSET', KEYS[2], 'status', ARGV[2], 'finished_at', ARGV[3])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'type', 'run_finished', 'status', ARGV[2],
  'ts', ARGV[3])
-- The record and the events get their TTL again: a server that lost them (a restart without
-- persistence) got them back from the writes above, without one.
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
redis.call('XADD', KEYS[3], '*', 'status', ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('ZREM', KEYS[5], ARGV[6])
redis.call('DEL', KEYS[6])
return 1
