-- Current use of some checks, for GET /v1/quota and the budget gauges.
-- KEYS[i] check base key; ARGV: n, then per check: kind, window
-- Reply: {now, used_1..used_n} (a rate limit's use slides over the last 60 s)
local now = clock()
local n = tonumber(ARGV[1])
local out = {tostring(now)}
for i = 1, n do
  local kind, window = ARGV[2 * i], ARGV[2 * i + 1]
  if kind == 'c' then
    out[#out + 1] = redis.call('ZCOUNT', KEYS[i], now, '+inf')
  elseif kind == 'r' then
    local cur, before, weight = rate_keys(KEYS[i], now)
    local values = redis.call('MGET', cur, before)
    local used = tonumber(values[1] or '0') + tonumber(values[2] or '0') * weight
    out[#out + 1] = math.floor(used)
  else
    out[#out + 1] = tonumber(redis.call('GET', window_key(KEYS[i], kind, window, now)) or '0')
  end
end
return out
