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

-- give back what an expired (leaked) reservation still holds
local function reclaim(pending, record_prefix, rid)
  local record = record_prefix .. rid
  if redis.call('HGET', record, 'state') == 'r' then
    local n = tonumber(redis.call('HGET', record, 'n'))
    for i = 1, n do
      local kv = redis.call('HMGET', record, 'k' .. i, 'a' .. i)
      local amount = tonumber(kv[2])
      if amount == -1 then
        redis.call('ZREM', kv[1], rid)
      elseif amount > 0 and redis.call('EXISTS', kv[1]) == 1 then
        redis.call('DECRBY', kv[1], int(amount))
      end
    end
    redis.call('HSET', record, 'state', 'x')
  end
  redis.call('ZREM', pending, rid)
end

-- A plan's checks, one per ';': kind,window,limit,unit,in_price,out_price
-- kind: r rate counter | c concurrency | b budget; unit: q requests | t tokens | u usd
local function parse_spec(spec)
  local checks = {}
  for kind, window, limit, unit, pin, pout in
      string.gmatch(spec, '([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*)') do
    checks[#checks + 1] = {kind = kind, window = window, limit = tonumber(limit),
                           unit = unit, pin = tonumber(pin), pout = tonumber(pout)}
  end
  return checks
end

-- what a request reserves on a check: base + per * out
local function amounts(c, prompt, n)
  if c.kind == 'c' or c.unit == 'q' then return 1, 0 end
  if c.unit == 'u' then return prompt * c.pin, n * c.pout end
  return prompt, n
end

-- what actual usage costs on a check
local function charge(c, prompt, completion)
  if c.kind == 'c' then return 0 end
  if c.unit == 'q' then return 1 end
  if c.unit == 'u' then return math.ceil(prompt * c.pin + completion * c.pout) end
  return prompt + completion
end
