-- Commit step 3 of 4, in one interface's slot: replies and HTTP request bodies.
--
-- Per message, KEYS: the interface's reply stream, its sequence table, the
-- request body (all tagged {IFACE}). ARGV: reply TTL ms, then per message:
-- conn, seq, reply ('' = none), body op ('append', 'delete' or ''), body
-- chunk, forget ('1': the connection or request is over).
-- An appended body chunk is guarded by the sequence table (a chunk handled
-- again is not appended twice); replies need no guard: the interface applies a
-- reply only if its `done` is above the last one it applied.
-- The replies to one interface go out as one stream entry with an `m` field
-- per reply, in order: one XADD per interface and batch, not per message.
local ttl = ARGV[1]
local i = 2
local expire = {}
local entries, streams = {}, {}
for m = 1, #KEYS / 3 do
  local stream, seqs, body = KEYS[3*m-2], KEYS[3*m-1], KEYS[3*m]
  local conn, seq, reply = ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2]
  local body_op, chunk, forget = ARGV[i+3], ARGV[i+4], ARGV[i+5] == '1'
  i = i + 6
  if body_op == 'append' then
    if seq > tonumber(redis.call('HGET', seqs, conn) or '0') then
      redis.call('APPEND', body, chunk)
      redis.call('PEXPIRE', body, ttl)
      redis.call('HSET', seqs, conn, seq)
      expire[seqs] = true
    end
  elseif body_op == 'delete' then
    redis.call('DEL', body)
  end
  if forget then redis.call('HDEL', seqs, conn) end
  if reply ~= '' then
    local entry = entries[stream]
    if not entry then
      entry = {stream, '*'}
      entries[stream] = entry
      streams[#streams + 1] = stream
    end
    entry[#entry + 1] = 'm'
    entry[#entry + 1] = reply
    expire[stream] = true
  end
end
for _, stream in ipairs(streams) do redis.call('XADD', unpack(entries[stream])) end
for key in pairs(expire) do redis.call('PEXPIRE', key, ttl) end
return #KEYS / 3
