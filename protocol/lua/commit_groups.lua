-- Commit step 2 of 4, in one group's slot: a message's group sends, once.
--
-- Per send, KEYS: the group's sequence counter, its pub/sub channel, its epoch,
-- its history, and the sender's "sent" marker (P:groupsent:{GROUP}:IFACE!CONN;
-- all in one slot). ARGV: publish command, marker TTL ms, history length,
-- history TTL ms, then per send: the sending message's sequence number, group,
-- kind, data. A message's sends to one group are consecutive; they go out only
-- if the marker is below the message's sequence number, which is then
-- recorded: a message handled again sends nothing twice.
-- Returns the number of sends made.
local publish, ttl, history, history_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local decided = {}
local sent = 0
local a = 5
for k = 1, #KEYS / 5 do
  local seq_key, channel, epoch_key, history_key, marker =
    KEYS[5*k-4], KEYS[5*k-3], KEYS[5*k-2], KEYS[5*k-1], KEYS[5*k]
  local seq, group, kind, data = tonumber(ARGV[a]), ARGV[a+1], ARGV[a+2], ARGV[a+3]
  a = a + 4
  local go = decided[marker]
  if go == nil then
    go = tonumber(redis.call('GET', marker) or '0') < seq
    decided[marker] = go
    if go then redis.call('SET', marker, seq, 'PX', ttl) end
  end
  if go then
    group_send(seq_key, channel, epoch_key, history_key, publish, group, kind, data, history, history_ttl)
    sent = sent + 1
  end
end
return sent
