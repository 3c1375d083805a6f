-- Current use of some checks, for GET /v1/quota and the budget gauges.
-- KEYS[i] check base key; ARGV: n, then per check: kind, window
-- Reply: {now, used_1..used_n}
local now = clock()
local n = tonumber(ARGV[1])
local out = {tostring(now)}
for i = 1, n do
  local kind, window = ARGV[2 * i], ARGV[2 * i + 1]
  local key = window_key(KEYS[i], kind, window, now)
  if kind == 'c' then
    out[#out + 1] = redis.call('ZCOUNT', key, now, '+inf')
  else
    out[#out + 1] = tonumber(redis.call('GET', key) or '0')
  end
end
return out
