-- Budget checkpoint: read the current windows of some budget counters, or restore them
-- into a Redis that came back empty. One call per hash tag.
-- KEYS[1] the tag's generation marker, KEYS[1+i] budget check i base key
-- ARGV[1] 'read' | 'restore'
--   read: ARGV[2] a new generation id, then per check: window.
--     The marker is set to the new id when it is missing (a fresh or emptied Redis).
--     Reply: {generation, created (0|1), now, key_1, value_1, ...}
--   restore: ARGV[2] the generation the checkpoint was read under, ARGV[3] a new id,
--     then per counter: key, value, window. Applied only when the marker is missing or
--     was set since that checkpoint by a read that found Redis empty
--     (marker value "<new id>:fresh"): the saved amounts are added to the counters.
--     Reply: 1 restored, 0 not needed.
local marker, op = KEYS[1], ARGV[1]
local now = clock()
if op == 'read' then
  local generation = redis.call('GET', marker)
  local created = 0
  if not generation then
    generation = ARGV[2] .. ':fresh'
    redis.call('SET', marker, generation)
    created = 1
  end
  local out = {generation, created, tostring(now)}
  for i = 2, #KEYS do
    local key = window_key(KEYS[i], 'b', ARGV[1 + i], now)
    out[#out + 1] = key
    out[#out + 1] = tonumber(redis.call('GET', key) or '0')
  end
  return out
end
local generation = redis.call('GET', marker)
if generation == ARGV[2] then return 0 end  -- the same Redis: nothing was lost
if generation and string.sub(generation, -6) ~= ':fresh' then return 0 end
redis.call('SET', marker, ARGV[3])  -- restored: later restores do nothing
for i = 4, #ARGV, 3 do
  local key, value, window = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if value > 0 and redis.call('INCRBY', key, int(value)) == value then
    redis.call('EXPIRE', key, TTL[window])
  end
end
return 1
