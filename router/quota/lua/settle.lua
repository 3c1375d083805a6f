-- Settlement: replace a reservation with what was used, free the slots.
-- Applied once per request id: a retried settlement is a no-op.
-- KEYS[1] record, KEYS[2] pending leases
-- ARGV: rid, lease, "prompt,completion,refund" (refund 1: the attempt is undone,
-- its request uncounted; the next pool's admission counts it), then the checks as
-- the admission had them (6 per check, see common.lua)
local record, pending, rid, lease = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local p, c, r = string.match(ARGV[3], '^(%d+),(%d+),(%d)$')
local prompt, completion, refund = tonumber(p), tonumber(c), r == '1'
local rec = redis.call('HMGET', record, 'state', 'k', 'a')
local state = rec[1]
if not state or state == 's' then return 0 end
local keys, reserved = record_entries(rec[2], rec[3])
for i = 1, #keys do
  if reserved[i] == -1 then
    if state == 'r' then redis.call('ZREM', keys[i], rid) end
  else
    local actual = 0
    if not refund then actual = charge(4 + (i - 1) * 6, prompt, completion) end
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
redis.call('HSET', record, 'state', 's')
redis.call('EXPIRE', record, SETTLED_TTL)
redis.call('ZREM', pending, rid)
return 1
