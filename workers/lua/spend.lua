-- Add a running subagent's spend to its run's ledger and check the run's budget.
-- KEYS[1] run record hash  KEYS[2] events stream
-- ARGV[1] input tokens  ARGV[2] output tokens  ARGV[3] dollars  ARGV[4] models with no price
-- (comma separated, or '')  ARGV[5] now  ARGV[6] ttl seconds  ARGV[7] events maxlen
-- The ledger (workers/run_result.py Ledger reads it): spent:in, spent:out, spent:cost and one
-- unpriced:<model> field per model without a price. The budget (max_tokens, max_cost_usd, set
-- at submit) is crossed once: the first script to see a total above it sets
-- budget_crossed_at, appends a budget_exceeded event and returns 1; its caller stops the run.
-- Returns 0 (or 1 when this call crossed the budget); 0 for a run whose record is gone.
if not redis.call('HGET', KEYS[1], 'n') then
  return 0
end
local tokens_in = redis.call('HINCRBY', KEYS[1], 'spent:in', ARGV[1])
local tokens_out = redis.call('HINCRBY', KEYS[1], 'spent:out', ARGV[2])
local cost = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'spent:cost', ARGV[3]))
if ARGV[4] ~= '' then
  for model in string.gmatch(ARGV[4], '[^,]+') do
    redis.call('HSET', KEYS[1], 'unpriced:' .. model, '1')
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
-- A run's budget covers its child runs too (tree_spend.lua keeps their sub: totals).
local budget = redis.call('HMGET', KEYS[1], 'max_tokens', 'max_cost_usd', 'sub:tokens',
  'sub:cost')
local over = (budget[1] and tokens_in + tokens_out + tonumber(budget[3] or '0')
    > tonumber(budget[1]))
  or (budget[2] and cost + tonumber(budget[4] or '0') > tonumber(budget[2]))
if over and redis.call('HSETNX', KEYS[1], 'budget_crossed_at', ARGV[5]) == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'type', 'budget_exceeded',
    'tokens', tokens_in + tokens_out, 'cost_usd', string.format('%.17g', cost), 'ts', ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  return 1
end
return 0
