-- Admission: every rate limit, the concurrency slots and the budget
-- reservations of one request, all or nothing.
-- KEYS[1] record (prefix .. rid), KEYS[2] pending leases (zset), KEYS[2+i] check i base key
-- ARGV: rid, lease, "out,min_out,prompt,n" (min_out 0: never clamp), then 6 per check
--       (see common.lua)
-- Reply: {code, out, failed (0-based, -1), now, used_1..used_n}
--   code 1 admitted (used = after), 2 rate limited, 3 budget short (used = before)
local rid, lease = ARGV[1], tonumber(ARGV[2])
local a, b, c, d = string.match(ARGV[3], '^(%d+),(%d+),(%d+),(%d+)$')
local out, min_out, prompt, nchoices = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
local record, pending = KEYS[1], KEYS[2]
local now = clock()

local prev = redis.call('HGET', record, 'out')
if prev then
  return {1, tonumber(prev), -1, tostring(now)}
end

local prefix = string.sub(record, 1, #record - #rid)
local expired = redis.call('ZRANGEBYSCORE', pending, '-inf', now, 'LIMIT', 0, 16)
for _, old in ipairs(expired) do reclaim(pending, prefix, old) end

local n = (#ARGV - 3) / 6
local bases, pers, keys, used, limits = {}, {}, {}, {}, {}
local counters, at = {}, {}  -- the counter keys, read in one MGET
for i = 1, n do
  local o = 4 + (i - 1) * 6
  local kind = ARGV[o]
  local key = window_key(KEYS[2 + i], kind, ARGV[o + 1], now)
  keys[i] = key
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    used[i] = redis.call('ZCARD', key)
  else
    counters[#counters + 1] = key
    at[#counters] = i
  end
end
if #counters > 0 then
  local values = redis.call('MGET', unpack(counters))
  for j = 1, #counters do used[at[j]] = tonumber(values[j] or '0') end
end
local fit, short = out, -1
for i = 1, n do
  local o = 4 + (i - 1) * 6
  local kind = ARGV[o]
  local base, per = amounts(o, prompt, nchoices)
  local limit = tonumber(ARGV[o + 2])
  bases[i], pers[i], limits[i] = base, per, limit
  if kind == 'b' then
    local avail = limit - used[i] - base
    if avail < per * out then
      local f = -1
      if per > 0 then f = math.floor(avail / per) elseif avail >= 0 then f = out end
      if f < fit then fit, short = f, i end
    end
  end
end

local budget_fail = -1
if fit < out then
  if min_out > 0 and fit >= min_out then out = fit else budget_fail = short end
end
for i = 1, n do
  local kind = ARGV[4 + (i - 1) * 6]
  if (kind == 'r' and used[i] + bases[i] + pers[i] * out > limits[i])
      or (kind == 'c' and used[i] + 1 > limits[i]) then
    return {2, out, i - 1, tostring(now), unpack(used)}
  end
end
if budget_fail > 0 then
  return {3, fit, budget_fail - 1, tostring(now), unpack(used)}
end

local reserved = {}
for i = 1, n do
  local o = 4 + (i - 1) * 6
  local key = keys[i]
  if ARGV[o] == 'c' then
    redis.call('ZADD', key, now + lease, rid)
    redis.call('EXPIRE', key, lease * 2)
    used[i] = used[i] + 1
    reserved[i] = '-1'
  else
    local amount = math.ceil(bases[i] + pers[i] * out)
    if amount > 0 and redis.call('INCRBY', key, int(amount)) == amount then
      redis.call('EXPIRE', key, TTL[ARGV[o + 1]])  -- a new window's counter
    end
    used[i] = used[i] + amount
    reserved[i] = int(amount)
  end
end
redis.call('HSET', record, 'state', 'r', 'out', out, 'k', table.concat(keys, ' '),
           'a', table.concat(reserved, ','))
redis.call('EXPIRE', record, lease * 4)
redis.call('ZADD', pending, now + lease, rid)
return {1, out, -1, tostring(now), unpack(used)}
