-- group_send(seq_key, channel, publish, group, kind, data) -> seq
-- One broadcast: takes the group's next sequence number and publishes a msgpack
-- {v, group, seq, text | bytes} on the group's channel. kind: 't' text, 'b'
-- bytes, 'j' a JSON object sent as text with "seq" added. publish: PUBLISH, or
-- SPUBLISH (sharded, on a Redis Cluster). Every key is in the group's slot.
local function group_send(seq_key, channel, publish, group, kind, data)
  local seq = redis.call('INCR', seq_key)
  local message = {v = 1, group = group, seq = seq}
  if kind == 'j' then
    local ok, object = pcall(cjson.decode, data)
    if ok and type(object) == 'table' then
      object['seq'] = seq
      data = cjson.encode(object)
    end
    kind = 't'
  end
  if kind == 't' then message['text'] = data else message['bytes'] = data end
  redis.call(publish, channel, cmsgpack.pack(message))
  return seq
end
