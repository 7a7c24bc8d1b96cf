-- group_history: where a group's numbering stands, and the broadcasts after a
-- position, read in one atomic step in the group's slot. Writes nothing.
--
-- KEYS: the group's sequence counter, its epoch, its history.
-- ARGV: since_epoch, since_seq, entries ('1': the broadcasts after since_seq;
-- '0': only where the numbering stands).
-- Returns {status, epoch, top, m...}: top is the group's last sequence number
-- (0: none yet), epoch its current epoch ('' when none). status:
--   'ok'      — the m... are the msgpack broadcasts since_seq+1 .. top, in order
--               (none when entries is '0' or since_seq = top);
--   'epoch'   — since_epoch is not the group's epoch: its history was lost or
--               reset since ('' with since_seq 0 means "from the very start"
--               and matches any epoch);
--   'trimmed' — the history no longer holds every broadcast after since_seq;
--   'ahead'   — since_seq is beyond the group's last broadcast.
local top = tonumber(redis.call('GET', KEYS[1]) or '0')
local epoch = redis.call('GET', KEYS[2]) or ''
local since_epoch, since = ARGV[1], tonumber(ARGV[2])
if not since or since < 0 or since ~= math.floor(since) then
  return redis.error_reply('since_seq must be a whole number >= 0')
end
if epoch == '' and top > 0 then return {'epoch', epoch, top} end
if since_epoch ~= epoch and not (since_epoch == '' and since == 0) then
  return {'epoch', epoch, top}
end
if since > top then return {'ahead', epoch, top} end
local result = {'ok', epoch, top}
if since == top or ARGV[3] ~= '1' then return result end
local want = top - since
local entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', want)
if #entries ~= want then return {'trimmed', epoch, top} end
for i = #entries, 1, -1 do
  local fields = entries[i][2]
  if fields[1] ~= 's' or tonumber(fields[2]) ~= since + (#entries - i + 1) or fields[3] ~= 'm' then
    return {'trimmed', epoch, top}
  end
  result[#result + 1] = fields[4]
end
return result
