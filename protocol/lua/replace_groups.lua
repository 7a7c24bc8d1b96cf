-- Replaces an interface's group set (the names of the groups it has members
-- in) in one step: the periodic refresh, so groups it left drop out.
-- KEYS: the group set. ARGV: expiry ms, then the group names.
redis.call('DEL', KEYS[1])
local names = {}
for i = 2, #ARGV do
  names[#names + 1] = ARGV[i]
  if #names == 1000 then
    redis.call('SADD', KEYS[1], unpack(names))
    names = {}
  end
end
if #names > 0 then
  redis.call('SADD', KEYS[1], unpack(names))
end
if #ARGV > 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return #ARGV - 1
