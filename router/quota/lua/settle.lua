-- Settlement: replace a reservation with what was used, free the slots.
-- Applied once per request id: a retried settlement is a no-op.
-- KEYS[1] record, KEYS[2] pending leases
-- ARGV: rid, lease, "prompt,completion,refund" (refund 1: the attempt is undone,
-- its request uncounted; the next pool's admission counts it)
local record, pending, rid, lease = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local p, c, r = string.match(ARGV[3], '^(%d+),(%d+),(%d)$')
local prompt, completion, refund = tonumber(p), tonumber(c), r == '1'
local state = redis.call('HGET', record, 'state')
if not state or state == 's' then return 0 end
local checks = parse_spec(redis.call('HGET', record, 'spec'))
for i = 1, #checks do
  local kv = redis.call('HMGET', record, 'k' .. i, 'a' .. i)
  local reserved = tonumber(kv[2])
  if reserved == -1 then
    if state == 'r' then redis.call('ZREM', kv[1], rid) end
  else
    local actual = 0
    if not refund then actual = charge(checks[i], prompt, completion) end
    -- a reclaimed ('x') reservation was already given back: charge in full
    local delta = actual
    if state == 'r' then delta = actual - reserved end
    if delta ~= 0 and redis.call('EXISTS', kv[1]) == 1 then
      redis.call('INCRBY', kv[1], int(delta))
    end
  end
end
redis.call('HSET', record, 'state', 's')
redis.call('EXPIRE', record, lease)
redis.call('ZREM', pending, rid)
return 1
