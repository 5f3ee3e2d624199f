-- A child run's spend counts toward every ancestor's budget: add it to each ancestor's
-- descendants' total and check that ancestor's budget against its own ledger plus that total.
-- KEYS[1..] the ancestors' run records (root first); ARGV[1] input tokens ARGV[2] output
-- tokens ARGV[3] dollars ARGV[4] now ARGV[5] ttl seconds.
-- Fields: sub:tokens and sub:cost (descendants' spend; the own ledger stays spent:in/out/cost,
-- so a tree's figures roll up without counting anything twice).
-- The first call to see an ancestor over its budget sets its budget_crossed_at (as spend.lua
-- does for a run's own spend); returns the positions (1-based) of the ancestors this call
-- took over their budgets (the caller stops those runs).
local crossed = {}
local tokens = tonumber(ARGV[1]) + tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'n') then
    local sub_tokens = redis.call('HINCRBY', key, 'sub:tokens', tokens)
    local sub_cost = tonumber(redis.call('HINCRBYFLOAT', key, 'sub:cost', ARGV[3]))
    redis.call('EXPIRE', key, ARGV[5])
    local f = redis.call('HMGET', key, 'max_tokens', 'max_cost_usd', 'spent:in', 'spent:out',
      'spent:cost')
    local total_tokens = sub_tokens + tonumber(f[3] or '0') + tonumber(f[4] or '0')
    local total_cost = sub_cost + tonumber(f[5] or '0')
    local over = (f[1] and total_tokens > tonumber(f[1]))
      or (f[2] and total_cost > tonumber(f[2]))
    if over and redis.call('HSETNX', key, 'budget_crossed_at', ARGV[4]) == 1 then
      table.insert(crossed, i)
    end
  end
end
return crossed
