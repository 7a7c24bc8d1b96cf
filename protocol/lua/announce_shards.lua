-- Records how many shards interfaces append to for a channel, keeping the
-- largest number ever announced: workers read every shard up to it, so a
-- message on a shard stays readable whatever the interfaces' settings.
-- KEYS: the channel-shards hash. ARGV: channel, shards. Returns the number kept.
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local wanted = tonumber(ARGV[2])
if wanted > current then
  redis.call('HSET', KEYS[1], ARGV[1], wanted)
  return wanted
end
return current
