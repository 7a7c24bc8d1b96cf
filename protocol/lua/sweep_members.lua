-- Removes from a group's member set every member of one interface (reply
-- addresses `IFACE!CONN`): the sweep after that interface died.
-- KEYS: the group's member set. ARGV: the prefix `IFACE!`. Returns how many went.
local prefix = ARGV[1]
local removed = 0
local batch = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then
    batch[#batch + 1] = member
    if #batch == 1000 then
      removed = removed + redis.call('ZREM', KEYS[1], unpack(batch))
      batch = {}
    end
  end
end
if #batch > 0 then
  removed = removed + redis.call('ZREM', KEYS[1], unpack(batch))
end
return removed
