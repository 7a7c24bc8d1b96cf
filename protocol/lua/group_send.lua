-- group_send(seq_key, channel, epoch_key, history_key, publish, group, kind, data, history, history_ttl) -> seq
-- One broadcast, in one atomic step in the group's slot: takes the group's next
-- sequence number, keeps the broadcast in the group's capped history and
-- publishes a msgpack {v, group, seq, epoch, text | bytes} on the group's channel.
--
-- epoch names the group's numbering: it is made anew (from the Redis clock, in
-- microseconds) whenever the counter starts again at 1 or the epoch key is gone
-- (Redis lost its data, the keys were deleted), and the old history is dropped
-- with it, so (epoch, seq) names one broadcast for good.
-- kind: 't' text, 'b' bytes, 'j' a JSON object sent as text with "seq", "epoch"
-- and "group" set. publish: PUBLISH, or SPUBLISH (sharded, on a Redis Cluster).
-- history: most broadcasts kept (0: none); history_ttl: milliseconds (0: no age
-- limit) — older entries are trimmed at each send and the whole history expires
-- that long after the group's last send. Every key is in the group's slot.
local function group_send(seq_key, channel, epoch_key, history_key, publish, group, kind, data, history, history_ttl)
  local seq = redis.call('INCR', seq_key)
  local epoch = redis.call('GET', epoch_key)
  if seq == 1 or not epoch then
    local now = redis.call('TIME')
    epoch = now[1] .. string.format('%06d', tonumber(now[2]))
    redis.call('SET', epoch_key, epoch)
    redis.call('DEL', history_key)
  end
  local message = {v = 1, group = group, seq = seq, epoch = epoch}
  if kind == 'j' then
    local ok, object = pcall(cjson.decode, data)
    if ok and type(object) == 'table' then
      object['seq'] = seq
      object['epoch'] = epoch
      object['group'] = group
      data = cjson.encode(object)
    end
    kind = 't'
  end
  if kind == 't' then message['text'] = data else message['bytes'] = data end
  local packed = cmsgpack.pack(message)
  history = tonumber(history) or 0
  if history > 0 then
    local id = redis.call('XADD', history_key, 'MAXLEN', history, '*', 's', seq, 'm', packed)
    local ttl = tonumber(history_ttl) or 0
    if ttl > 0 then
      local ms = tonumber(string.match(id, '^(%d+)'))
      redis.call('XTRIM', history_key, 'MINID', ms - ttl)
      redis.call('PEXPIRE', history_key, ttl)
    end
  end
  redis.call(publish, channel, packed)
  return seq
end
