-- The fleet-wide rate limits of one call, checked and charged at once: the limits of its model,
-- of a named key, of its agent, any set of them. All or nothing: a call charged under one limit
-- while it waits for another would hold a turn it cannot use, and two callers doing that in
-- opposite orders could starve each other; one script over every limit cannot.
-- Sliding window logs: every grant (and every token charge) is one entry scored by the time it
-- was made, so no window ever holds more than the limit, wherever it starts; the clock is the
-- server's (TIME), shared by every worker machine whatever their own clocks say.
-- KEYS: five per limit, in ARGV's order: sums hash (in, out: tokens in the window), requests
--   zset, input-token zset, output-token zset, leases zset (id -> expiry ms)
-- ARGV[1] op: 'acquire', 'release' or 'renew'  ARGV[2] lease id  ARGV[3] limits L
-- then L groups of ARGV, one per limit:
-- acquire (8): window ms, key ttl s, requests per window, input tokens per window, output
--   tokens per window, concurrent (each 0: no limit), input tokens asked, lease ms
-- release (4): window ms, key ttl s, input tokens to add (used above the estimate), output
--   tokens used
-- renew (2): lease ms, key ttl s (a concurrency lease still held lives lease ms from now)
-- Token entries are '<lease id>:<kind>|<amount>'. acquire returns 0 (go: charged under every
-- limit, and a lease held where concurrency is limited) or the ms to wait before asking again
-- (the longest wait of the limits); release returns 0; renew the number of leases it found
-- gone (expired: their holder stalled longer than lease ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, lease, limits = ARGV[1], ARGV[2], tonumber(ARGV[3])
local width = ({acquire = 8, release = 4, renew = 2})[op]

local function amount(member)
  return tonumber(string.match(member, '|(%-?%d+)$')) or 0
end

local function expire_tokens(k, zkey, field, oldest)
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', oldest)
  local freed = 0
  for _, member in ipairs(gone) do
    freed = freed + amount(member)
  end
  if freed ~= 0 then
    redis.call('HINCRBY', k, field, -freed)
  end
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', oldest)
  return tonumber(redis.call('HGET', k, field) or '0')
end

-- ms until enough of the window's tokens leave it for ``need`` more to fit
local function wait_tokens(zkey, need, window)
  local freed = 0
  local entries = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    freed = freed + amount(entries[i])
    if freed >= need then
      return tonumber(entries[i + 1]) + window - now
    end
  end
  return window
end

local function charge(k, zkey, field, member, tokens)
  if tokens > 0 then
    redis.call('ZADD', zkey, now, member .. '|' .. tokens)
    redis.call('HINCRBY', k, field, tokens)
  end
end

local function keep(base, ttl)
  for i = base, base + 4 do
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end

local function arg(l, i)
  return tonumber(ARGV[3 + (l - 1) * width + i])
end

-- The wait (ms) limit l asks of this call; 0: it fits.
local function wait_of(l)
  local b = (l - 1) * 5 + 1
  local window = arg(l, 1)
  local oldest = now - window
  local sum_in = expire_tokens(KEYS[b], KEYS[b + 2], 'in', oldest)
  local sum_out = expire_tokens(KEYS[b], KEYS[b + 3], 'out', oldest)
  local max_req, max_in, max_out = arg(l, 3), arg(l, 4), arg(l, 5)
  local max_conc, asked = arg(l, 6), arg(l, 7)
  redis.call('ZREMRANGEBYSCORE', KEYS[b + 1], '-inf', oldest)
  redis.call('ZREMRANGEBYSCORE', KEYS[b + 4], '-inf', now)
  local wait = 0
  if max_req > 0 and redis.call('ZCARD', KEYS[b + 1]) >= max_req then
    local first = redis.call('ZRANGE', KEYS[b + 1], 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(first[2]) + window - now)
  end
  -- A request larger than the whole window's allowance goes alone, into an empty window.
  if max_in > 0 and sum_in > 0 and sum_in + asked > max_in then
    wait = math.max(wait, wait_tokens(KEYS[b + 2], sum_in + asked - max_in, window))
  end
  if max_out > 0 and sum_out >= max_out then
    wait = math.max(wait, wait_tokens(KEYS[b + 3], sum_out - max_out + 1, window))
  end
  if max_conc > 0 and redis.call('ZCARD', KEYS[b + 4]) >= max_conc then
    -- Leases end early (released after the call): ask again soon, at the latest at an expiry.
    local first = redis.call('ZRANGE', KEYS[b + 4], 0, 0, 'WITHSCORES')
    wait = math.max(wait, math.min(tonumber(first[2]) - now, 100))
  end
  return wait
end

local function grant(l)
  local b = (l - 1) * 5 + 1
  if arg(l, 3) > 0 then
    redis.call('ZADD', KEYS[b + 1], now, lease)
  end
  charge(KEYS[b], KEYS[b + 2], 'in', lease .. ':i', arg(l, 7))
  if arg(l, 6) > 0 then
    redis.call('ZADD', KEYS[b + 4], now + arg(l, 8), lease)
  end
  keep(b, arg(l, 2))
end

if op == 'release' then
  for l = 1, limits do
    local b = (l - 1) * 5 + 1
    local oldest = now - arg(l, 1)
    expire_tokens(KEYS[b], KEYS[b + 2], 'in', oldest)
    expire_tokens(KEYS[b], KEYS[b + 3], 'out', oldest)
    redis.call('ZREM', KEYS[b + 4], lease)
    charge(KEYS[b], KEYS[b + 2], 'in', lease .. ':c', arg(l, 3))
    charge(KEYS[b], KEYS[b + 3], 'out', lease .. ':o', arg(l, 4))
    keep(b, arg(l, 2))
  end
  return 0
end

if op == 'renew' then
  local lost = 0
  for l = 1, limits do
    local b = (l - 1) * 5 + 1
    if redis.call('ZADD', KEYS[b + 4], 'XX', 'CH', now + arg(l, 1), lease) == 0 then
      lost = lost + 1
    end
    keep(b, arg(l, 2))
  end
  return lost
end

local wait = 0
for l = 1, limits do
  wait = math.max(wait, wait_of(l))
end
if wait > 0 then
  return math.max(1, math.ceil(wait))
end
for l = 1, limits do
  grant(l)
end
return 0
