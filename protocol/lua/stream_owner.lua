-- Before each early piece of a streamed HTTP response, in the channel shard's
-- slot: is the entry still pending to this worker? If so its idle time is
-- reset (a long response is not work left behind for --claim-idle).
-- KEYS: the channel shard stream. ARGV: group, consumer, entry id.
-- Returns 1 if still ours, 0 if another worker took it or it is acknowledged.
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
