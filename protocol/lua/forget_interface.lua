-- Drops a dead interface from the interfaces index once it was swept, unless
-- it was seen again meanwhile (restarted under the same id).
-- KEYS: the interfaces index. ARGV: interface id, the last-seen score (ms) it
-- was swept at. Returns 1 if it was dropped.
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seen and tonumber(seen) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
