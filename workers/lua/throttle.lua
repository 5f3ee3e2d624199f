-- The fleet-wide rate limit of one name (a model or a named key), checked and charged at once.
-- Sliding window logs: every grant (and every token charge) is one entry scored by the time it
-- was made, so no window of ARGV[3] ms ever holds more than the limit, wherever it starts; the
-- clock is the server's (TIME), shared by every worker machine whatever their own clocks say.
-- KEYS[1] sums hash (in, out: tokens in the window)  KEYS[2] requests zset
-- KEYS[3] input-token zset  KEYS[4] output-token zset  KEYS[5] leases zset (id -> expiry ms)
-- ARGV[1] op: 'acquire' or 'release'  ARGV[2] lease id  ARGV[3] window ms  ARGV[4] key ttl s
-- acquire: ARGV[5] requests per window  ARGV[6] input tokens per window  ARGV[7] output tokens
--   per window  ARGV[8] concurrent  (each 0: no limit)  ARGV[9] input tokens asked
--   ARGV[10] lease ms
-- release: ARGV[5] input tokens to add (used above the estimate)  ARGV[6] output tokens used
-- Token entries are '<lease id>:<kind>|<amount>'. acquire returns 0 (go: charged, and a lease
-- held when concurrency is limited) or the ms to wait before asking again; release returns 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[3])
local oldest = now - window

local function amount(member)
  return tonumber(string.match(member, '|(%-?%d+)$')) or 0
end

local function expire_tokens(zkey, field)
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', oldest)
  local freed = 0
  for _, member in ipairs(gone) do
    freed = freed + amount(member)
  end
  if freed ~= 0 then
    redis.call('HINCRBY', KEYS[1], field, -freed)
  end
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', oldest)
  return tonumber(redis.call('HGET', KEYS[1], field) or '0')
end

-- ms until enough of the window's tokens leave it for ``need`` more to fit
local function wait_tokens(zkey, need)
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

local function charge(zkey, field, member, tokens)
  if tokens > 0 then
    redis.call('ZADD', zkey, now, member .. '|' .. tokens)
    redis.call('HINCRBY', KEYS[1], field, tokens)
  end
end

local function keep(ttl)
  for i = 1, 5 do
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end

local lease = ARGV[2]
local ttl = tonumber(ARGV[4])
local sum_in = expire_tokens(KEYS[3], 'in')
local sum_out = expire_tokens(KEYS[4], 'out')

if ARGV[1] == 'release' then
  redis.call('ZREM', KEYS[5], lease)
  charge(KEYS[3], 'in', lease .. ':c', tonumber(ARGV[5]))
  charge(KEYS[4], 'out', lease .. ':o', tonumber(ARGV[6]))
  keep(ttl)
  return 0
end

local max_req, max_in, max_out = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local max_conc, asked, lease_ms = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', oldest)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local wait = 0
if max_req > 0 and redis.call('ZCARD', KEYS[2]) >= max_req then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  wait = math.max(wait, tonumber(first[2]) + window - now)
end
-- A request larger than the whole window's allowance goes alone, into an empty window.
if max_in > 0 and sum_in > 0 and sum_in + asked > max_in then
  wait = math.max(wait, wait_tokens(KEYS[3], sum_in + asked - max_in))
end
if max_out > 0 and sum_out >= max_out then
  wait = math.max(wait, wait_tokens(KEYS[4], sum_out - max_out + 1))
end
if max_conc > 0 and redis.call('ZCARD', KEYS[5]) >= max_conc then
  -- Leases end early (released after the call): ask again soon, at the latest at an expiry.
  local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  wait = math.max(wait, math.min(tonumber(first[2]) - now, 100))
end
if wait > 0 then
  return math.max(1, math.ceil(wait))
end
if max_req > 0 then
  redis.call('ZADD', KEYS[2], now, lease)
end
charge(KEYS[3], 'in', lease .. ':i', asked)
if max_conc > 0 then
  redis.call('ZADD', KEYS[5], now + lease_ms, lease)
end
keep(ttl)
return 0
