-- Record a subtask's envelope once (first terminal envelope wins) and, for a race, claim the win.
-- KEYS[1] results hash  KEYS[2] run record hash  KEYS[3] events stream  KEYS[4] winner string
-- ARGV[1] index  ARGV[2] envelope JSON  ARGV[3] status  ARGV[4] ttl seconds
-- ARGV[5] '1' to try to claim the race win  ARGV[6] now  ARGV[7] events maxlen
-- Aggregates kept on the run record, so a run whose every subtask reported can be ended
-- without reading a single envelope (workers/run_result.py Aggregates is their reader):
-- ARGV[8] seconds ran  ARGV[9] seconds queued before start, or ''  ARGV[10] queued at, or ''
-- ARGV[11] '1' if a stop had been requested of this subtask
-- ARGV[12] seconds it waited under rate limits  ARGV[13] retries of its failed calls
-- Duration statistics (optional), appended only for a new envelope:
-- KEYS[5] stats counts hash  KEYS[6..] stats sample lists, one per ARGV[20..]
-- ARGV[14] samples kept per list  ARGV[15] stats ttl seconds  ARGV[20..] the samples
-- Spend not yet in the run's ledger (added for a duplicate too: it was spent), as spend.lua
-- takes it: ARGV[16] input tokens  ARGV[17] output tokens  ARGV[18] dollars  ARGV[19] models
-- with no price
-- A gather(early=True) has 'early_quorum' on its record: the new ok envelope that makes the ok
-- count equal it gets quorum=1 (exactly one does) and stamps 'quorum_at'.
-- Returns {new, done, n, won, crossed, quorum}: new=1 if this envelope was recorded (0: duplicate
-- delivery, or a run whose record is gone: a server restarted without persistence; its waiters
-- get RunLost, and a partial record written here would look like a finished run of 0
-- subtasks); crossed=1 if this spend took the run over its budget (see spend.lua).
local count_field = 'agg:' .. ARGV[3]
local rec = redis.call('HMGET', KEYS[2], 'done', 'n', count_field, 'agg:ran', 'agg:wait',
  'agg:waits', 'agg:min_queued', 'agg:stop_requested', 'early_quorum')
if not rec[2] then
  return {0, 0, 0, 0, 0, 0}
end
local quorum = 0
local crossed = 0
local ledger = nil
if ARGV[16] ~= '0' or ARGV[17] ~= '0' or ARGV[18] ~= '0.0' or ARGV[19] ~= '' then
  local tokens_in = redis.call('HINCRBY', KEYS[2], 'spent:in', ARGV[16])
  local tokens_out = redis.call('HINCRBY', KEYS[2], 'spent:out', ARGV[17])
  local cost = tonumber(redis.call('HINCRBYFLOAT', KEYS[2], 'spent:cost', ARGV[18]))
  if ARGV[19] ~= '' then
    for model in string.gmatch(ARGV[19], '[^,]+') do
      redis.call('HSET', KEYS[2], 'unpriced:' .. model, '1')
    end
  end
  ledger = {tokens_in + tokens_out, string.format('%.17g', cost)}
  -- As spend.lua: the budget covers child runs' spend (sub:tokens, sub:cost) too.
  local budget = redis.call('HMGET', KEYS[2], 'max_tokens', 'max_cost_usd', 'sub:tokens',
    'sub:cost')
  local over = (budget[1] and tokens_in + tokens_out + tonumber(budget[3] or '0')
      > tonumber(budget[1]))
    or (budget[2] and cost + tonumber(budget[4] or '0') > tonumber(budget[2]))
  if over and redis.call('HSETNX', KEYS[2], 'budget_crossed_at', ARGV[6]) == 1 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'type', 'budget_exceeded',
      'tokens', tokens_in + tokens_out, 'cost_usd', string.format('%.17g', cost), 'ts', ARGV[6])
    crossed = 1
  end
end
local new = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
local done = tonumber(rec[1] or '0')
local n = tonumber(rec[2] or '0')
local won = 0
if new == 1 then
  done = done + 1
  local function fmt(x) return string.format('%.17g', x) end
  local update = {'done', done, count_field, tonumber(rec[3] or '0') + 1,
    'agg:ran', fmt(tonumber(rec[4] or '0') + tonumber(ARGV[8]))}
  if ARGV[9] ~= '' then
    table.insert(update, 'agg:wait')
    table.insert(update, fmt(tonumber(rec[5] or '0') + tonumber(ARGV[9])))
    table.insert(update, 'agg:waits')
    table.insert(update, tonumber(rec[6] or '0') + 1)
  end
  if ARGV[10] ~= '' and (not rec[7] or tonumber(ARGV[10]) < tonumber(rec[7])) then
    -- Kept as sent: a round trip through a Lua number would cost precision.
    table.insert(update, 'agg:min_queued')
    table.insert(update, ARGV[10])
  end
  if done == n then
    -- Every subtask has reported: coordinators resend a gather's merger nobody sent by then.
    table.insert(update, 'all_reported_at')
    table.insert(update, ARGV[6])
  end
  if ARGV[11] == '1' then
    table.insert(update, 'agg:stop_requested')
    table.insert(update, tonumber(rec[8] or '0') + 1)
  end
  if rec[9] and ARGV[3] == 'ok' and tonumber(rec[3] or '0') + 1 == tonumber(rec[9]) then
    quorum = 1
    table.insert(update, 'quorum_at')
    table.insert(update, ARGV[6])
  end
  redis.call('HSET', KEYS[2], unpack(update))
  if ARGV[12] ~= '0' then
    redis.call('HINCRBYFLOAT', KEYS[2], 'agg:throttled', ARGV[12])
  end
  if ARGV[13] ~= '0' then
    redis.call('HINCRBY', KEYS[2], 'agg:retries', ARGV[13])
  end
  -- Written keys keep a TTL even when the server had lost them (a restart without persistence).
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  if ARGV[5] == '1' then
    if redis.call('SET', KEYS[4], ARGV[1], 'NX', 'EX', ARGV[4]) then
      won = 1
    end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if new == 1 then
  local event = {'type', 'finished', 'index', ARGV[1], 'status', ARGV[3], 'won', won,
    'ts', ARGV[6]}
  if ledger then
    -- The run's ledger after this envelope: live spend for watchers, no extra read.
    table.insert(event, 'tokens')
    table.insert(event, ledger[1])
    table.insert(event, 'cost_usd')
    table.insert(event, ledger[2])
  end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', unpack(event))
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  for i = 6, #KEYS do
    redis.call('LPUSH', KEYS[i], ARGV[i + 14])
    redis.call('LTRIM', KEYS[i], 0, tonumber(ARGV[14]) - 1)
    redis.call('EXPIRE', KEYS[i], ARGV[15])
    redis.call('HINCRBY', KEYS[5], KEYS[i], 1)
  end
  if #KEYS >= 6 then
    redis.call('EXPIRE', KEYS[5], ARGV[15])
  end
end
return {new, done, n, won, crossed, quorum}
