-- Shared by every Spillway script (prepended when the scripts are loaded).
-- Windows are UTC calendar windows read from the Redis clock (TIME).

local function civil_month(days)
  -- Howard Hinnant's civil_from_days: days since 1970-01-01 -> year, month
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function bucket(window, now)
  if window == 'minute' then return math.floor(now / 60) end
  if window == 'hour' then return math.floor(now / 3600) end
  if window == 'day' then return math.floor(now / 86400) end
  if window == 'month' then
    local y, m = civil_month(math.floor(now / 86400))
    return y * 12 + m - 1
  end
  return 0
end

-- a settled record stays this long, so a retried settlement finds it and does nothing
local SETTLED_TTL = 120
-- record states: r reserved, s settled, x reclaimed (lease over), t refunded before its
-- admission was seen (a tombstone: the admission, if it lands later, does nothing)

-- counters outlive their window by a margin, then vanish
local TTL = {minute = 180, hour = 7500, day = 180000, month = 2851200}

local function int(x)
  return string.format('%.0f', x)
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function window_key(base, kind, window, now)
  if kind == 'c' then return base end
  return base .. ':' .. int(bucket(window, now))
end

-- rate limits slide: the previous minute counts by the part of it still within 60 s
local RATE_SPAN = 60

-- (current minute's key, previous minute's key, weight of the previous one)
local function rate_keys(base, now)
  local b = math.floor(now / RATE_SPAN)
  return base .. ':' .. int(b), base .. ':' .. int(b - 1), 1 - (now - b * RATE_SPAN) / RATE_SPAN
end

-- seconds until a rate check of `limit` has room for `cost` more, nothing else arriving
-- (cur, prev: the two minutes' counts; elapsed: seconds into the current minute)
local function rate_wait(cur, prev, limit, cost, elapsed)
  if cost > limit then return RATE_SPAN - elapsed end
  local room = limit - cost
  if prev > 0 and cur <= room then
    local t = RATE_SPAN * (1 - (room - cur) / prev) - elapsed
    if t < 0 then t = 0 end
    return t
  end
  local s = 0
  if cur > 0 then s = RATE_SPAN * (1 - room / cur) end
  return RATE_SPAN - elapsed + s
end

-- Checks come in one argument, ';'-separated, each
--   kind,window,limit,unit,in_price,out_price
-- kind: r rate counter | c concurrency | b budget; window: minute|hour|day|month ('' for
-- concurrency); unit: q requests | t tokens | u usd | s slots; prices in nano-USD/token
local function read_checks(text)
  local checks = {}
  for kind, window, limit, unit, inp, outp in
      string.gmatch(text, '([rcb]),(%a*),([^,;]+),(%a),([^,;]+),([^,;]+)') do
    checks[#checks + 1] = {kind = kind, window = window, limit = tonumber(limit), unit = unit,
                           inp = tonumber(inp), outp = tonumber(outp)}
  end
  return checks
end

-- what a request reserves on a check: base + per * out
local function amounts(c, prompt, n)
  if c.kind == 'c' or c.unit == 'q' then return 1, 0 end
  if c.unit == 'u' then return prompt * c.inp, n * c.outp end
  return prompt, n
end

-- what actual usage costs on a check
local function charge(c, prompt, completion)
  if c.kind == 'c' then return 0 end
  if c.unit == 'q' then return 1 end
  if c.unit == 'u' then return math.ceil(prompt * c.inp + completion * c.outp) end
  return prompt + completion
end

-- a reservation record holds its keys ('k', space-separated) and the amounts
-- reserved on them ('a', comma-separated; -1 marks a concurrency slot)
local function record_entries(keys_text, amounts_text)
  local keys, amounts = {}, {}
  for k in string.gmatch(keys_text, '%S+') do keys[#keys + 1] = k end
  for a in string.gmatch(amounts_text, '[^,]+') do amounts[#amounts + 1] = tonumber(a) end
  return keys, amounts
end

-- give back what an expired (leaked) reservation still holds
local function reclaim(pending, record_prefix, rid)
  local record = record_prefix .. rid
  local rec = redis.call('HMGET', record, 'state', 'k', 'a')
  if rec[1] == 'r' then
    local keys, amounts = record_entries(rec[2], rec[3])
    for i = 1, #keys do
      local amount = amounts[i]
      if amount == -1 then
        redis.call('ZREM', keys[i], rid)
      elseif amount > 0 and redis.call('EXISTS', keys[i]) == 1 then
        redis.call('DECRBY', keys[i], int(amount))
      end
    end
    redis.call('HSET', record, 'state', 'x')
  end
  redis.call('ZREM', pending, rid)
end
