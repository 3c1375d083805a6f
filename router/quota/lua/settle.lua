-- Settlement: replace a reservation with what was used, free the slots.
-- Applied once per request id: a retried settlement is a no-op.
-- KEYS[1] record, KEYS[2] pending leases, KEYS[2+i] check i base key
-- ARGV: "lease,prompt,completion,refund,orphan,rid", the checks as the admission had
-- them (see read_checks in common.lua).
--   refund 1: the attempt is undone, its request uncounted (the next pool's admission
--     counts it).
--   orphan 1: this admission's outcome here is unknown (it timed out, or was decided
--     in-process while Redis was away). A refund leaves a tombstone ('t': the
--     admission, if it lands later, does nothing; a charge written back later is made
--     in full, once); without a record a charge is made in full.
local record, pending = KEYS[1], KEYS[2]
local l, p, c, r, o, rid = string.match(ARGV[1], '^(%d+),(%d+),(%d+),(%d),(%d),(.+)$')
local lease, prompt, completion = tonumber(l), tonumber(p), tonumber(c)
local refund, orphan = r == '1', o == '1'
local checks = read_checks(ARGV[2])
local rec = redis.call('HMGET', record, 'state', 'k', 'a')
local state = rec[1]
if state == 's' or (state == 't' and refund) then return 0 end
if not state then
  if not orphan then return 0 end  -- settled long ago: its record is gone
  if refund then
    redis.call('HSET', record, 'state', 't', 'out', 0)
    redis.call('EXPIRE', record, lease * 4)
    return 1
  end
end
if not state or state == 't' then
  -- nothing is reserved here: charge the usage in full on the current windows
  local now = clock()
  for i, check in ipairs(checks) do
    local amount = charge(check, prompt, completion)
    if check.kind ~= 'c' and amount > 0 then
      local key
      if check.kind == 'r' then key = rate_keys(KEYS[2 + i], now)
      else key = window_key(KEYS[2 + i], check.kind, check.window, now) end
      if redis.call('INCRBY', key, int(amount)) == amount then
        redis.call('EXPIRE', key, TTL[check.window])
      end
    end
  end
  redis.call('HSET', record, 'state', 's', 'out', 0)
  redis.call('EXPIRE', record, lease)
  return 1
end
local keys, reserved = record_entries(rec[2], rec[3])
for i = 1, #keys do
  if reserved[i] == -1 then
    if state == 'r' then redis.call('ZREM', keys[i], rid) end
  else
    local actual = 0
    if not refund then actual = charge(checks[i], prompt, completion) end
    -- a reclaimed ('x') reservation was already given back: charge in full
    local delta = actual
    if state == 'r' then delta = actual - reserved[i] end
    -- a counter whose window ended meanwhile is gone: don't bring it back
    if delta ~= 0 and redis.call('INCRBY', keys[i], int(delta)) == delta
        and redis.call('TTL', keys[i]) == -1 then
      redis.call('DEL', keys[i])
    end
  end
end
redis.call('ZREM', pending, rid)
if orphan and refund then
  -- given back, but what the request really used may still be written back: a record
  -- that takes that charge once, like a tombstone
  redis.call('HSET', record, 'state', 't')
  redis.call('EXPIRE', record, lease * 4)
  return 1
end
redis.call('HSET', record, 'state', 's')
redis.call('EXPIRE', record, SETTLED_TTL)
return 1
