-- Read a run's final result in one round trip.
-- KEYS[1] result string  KEYS[2] run record hash  KEYS[3] results hash
-- ARGV empty: every envelope; ARGV[1] = 'some', ARGV[2..]: only these indices (a reader that
-- fetched the others while the run went on).
-- Returns nil while the run is open; {result} when the result holds its envelopes;
-- {result, envelope...} when every subtask had reported as the run ended, so its envelopes
-- stayed in the results hash (record field 'results_in' = 'hash'; the result names the key).
local result = redis.call('GET', KEYS[1])
if not result then
  return nil
end
if redis.call('HGET', KEYS[2], 'results_in') ~= 'hash' then
  return {result}
end
local reply
if ARGV[1] == 'some' then
  if #ARGV == 1 then
    return {result}
  end
  reply = redis.call('HMGET', KEYS[3], unpack(ARGV, 2))
else
  reply = redis.call('HVALS', KEYS[3])
end
table.insert(reply, 1, result)
return reply
