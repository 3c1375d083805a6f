-- Admission: every rate limit, the concurrency slots and the budget
-- reservations of one request, all or nothing.
-- KEYS[1] record (prefix .. rid), KEYS[2] pending leases (zset), KEYS[2+i] check i base key
-- ARGV: "lease,out,min_out,prompt,n,rid" (min_out 0: never clamp), the checks (see
--       read_checks in common.lua)
-- Reply: {code, out, failed (0-based, -1), now, wait, used_1..used_n}
--   code 1 admitted (used = after), 2 rate limited, 3 budget short (used = before);
--   wait: seconds until the refusing rate limit has room (0 otherwise)
local l, a, b, c, d, rid = string.match(ARGV[1], '^(%d+),(%d+),(%d+),(%d+),(%d+),(.+)$')
local lease, out, min_out = tonumber(l), tonumber(a), tonumber(b)
local prompt, nchoices = tonumber(c), tonumber(d)
local record, pending = KEYS[1], KEYS[2]
local now = clock()

-- a record of any state: this admission was made, settled or refunded already
local prev = redis.call('HMGET', record, 'state', 'out')
if prev[1] then
  return {1, tonumber(prev[2] or '0'), -1, tostring(now), '0'}
end

local prefix = string.sub(record, 1, #record - #rid)
local expired = redis.call('ZRANGEBYSCORE', pending, '-inf', now, 'LIMIT', 0, 16)
for _, old in ipairs(expired) do reclaim(pending, prefix, old) end

local checks = read_checks(ARGV[2])
local n = #checks
local bases, pers, keys, used, limits = {}, {}, {}, {}, {}
local counters, at = {}, {}  -- the counter keys, read in one MGET
local prevs, weights = {}, {}  -- rate checks: the previous minute and its weight
for i = 1, n do
  local kind = checks[i].kind
  if kind == 'c' then
    keys[i] = KEYS[2 + i]
    redis.call('ZREMRANGEBYSCORE', keys[i], '-inf', now)
    used[i] = redis.call('ZCARD', keys[i])
  elseif kind == 'r' then
    local cur, before, weight = rate_keys(KEYS[2 + i], now)
    keys[i] = cur
    counters[#counters + 1] = cur
    at[#counters] = i
    counters[#counters + 1] = before
    at[#counters] = -i
    weights[i] = weight
  else
    keys[i] = window_key(KEYS[2 + i], kind, checks[i].window, now)
    counters[#counters + 1] = keys[i]
    at[#counters] = i
  end
end
if #counters > 0 then
  local values = redis.call('MGET', unpack(counters))
  for j = 1, #counters do
    local v = tonumber(values[j] or '0')
    if at[j] > 0 then used[at[j]] = v else prevs[-at[j]] = v end
  end
end
local counts = {}  -- rate checks: the current minute's own count
for i = 1, n do
  if weights[i] then
    counts[i] = used[i]
    used[i] = used[i] + prevs[i] * weights[i]
  end
end
local fit, short = out, -1
for i = 1, n do
  local kind = checks[i].kind
  local base, per = amounts(checks[i], prompt, nchoices)
  local limit = checks[i].limit
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

local shown = {}  -- used as replied: whole numbers
for i = 1, n do shown[i] = math.floor(used[i]) end
local budget_fail = -1
if fit < out then
  if min_out > 0 and fit >= min_out then out = fit else budget_fail = short end
end
for i = 1, n do
  local kind = checks[i].kind
  local cost = bases[i] + pers[i] * out
  if kind == 'r' and used[i] + cost > limits[i] then
    local elapsed = now - math.floor(now / RATE_SPAN) * RATE_SPAN
    local wait = rate_wait(counts[i], prevs[i], limits[i], cost, elapsed)
    return {2, out, i - 1, tostring(now), tostring(wait), unpack(shown)}
  end
  if kind == 'c' and used[i] + 1 > limits[i] then
    return {2, out, i - 1, tostring(now), '1', unpack(shown)}
  end
end
if budget_fail > 0 then
  return {3, fit, budget_fail - 1, tostring(now), '0', unpack(shown)}
end

local reserved = {}
for i = 1, n do
  local key = keys[i]
  if checks[i].kind == 'c' then
    redis.call('ZADD', key, now + lease, rid)
    redis.call('EXPIRE', key, lease * 2)
    shown[i] = shown[i] + 1
    reserved[i] = '-1'
  else
    local amount = math.ceil(bases[i] + pers[i] * out)
    if amount > 0 and redis.call('INCRBY', key, int(amount)) == amount then
      redis.call('EXPIRE', key, TTL[checks[i].window])  -- a new window's counter
    end
    shown[i] = math.floor(used[i] + amount)
    reserved[i] = int(amount)
  end
end
redis.call('HSET', record, 'state', 'r', 'out', out, 'k', table.concat(keys, ' '),
           'a', table.concat(reserved, ','))
redis.call('EXPIRE', record, lease * 4)
redis.call('ZADD', pending, now + lease, rid)
return {1, out, -1, tostring(now), '0', unpack(shown)}
