-- Commit steps 1, 3 and 4 in one call, on a single Redis only (the keys span
-- hash slots): appended by the workers to `commit_session.lua` in place of its
-- last line, for WebSocket messages without group sends, HTTP body or ending.
-- On a single Redis the slot-local steps cost a round trip each; this one
-- call does what they would, in the same order, so a message's commit is one
-- round trip instead of three (measured in docs/benchmarks.md, "At a fixed
-- rate").
--
-- KEYS: the session and outbox of each message (as `commit_session.lua`),
-- then the reply streams, then the channel shard streams. ARGV: as
-- `commit_session.lua` for the messages, then: reply TTL ms, the consumer
-- group, the number of reply streams, the number of shard streams; per
-- message: its reply stream's number, its reply ('' = none), its shard
-- stream's number (0: not acknowledged here, a message of a packed entry,
-- docs/protocol.md "Packed entries"), its entry id; last, the number of
-- messages.
-- Per message, the session's result decides the rest: 1 (committed now) →
-- its reply and its ack; 0 (a later message is committed) → its ack only;
-- "<seq> <outcome>" (committed before) → nothing here: the worker finishes it
-- with the stored outcome through the slot-local steps. Returns the session
-- results.
local count = tonumber(ARGV[#ARGV])
local results, i = commit_sessions(count)
local reply_ttl, group = ARGV[i], ARGV[i+1]
local n_replies = tonumber(ARGV[i+2])
local base = 2 * count
i = i + 4
local entries, acks = {}, {}
for m = 1, count do
  local r, reply, a, id = tonumber(ARGV[i]), ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+3]
  i = i + 4
  local result = results[m]
  if result == 1 and reply ~= '' then
    local entry = entries[r]
    if not entry then
      entry = {KEYS[base + r], '*'}
      entries[r] = entry
    end
    entry[#entry + 1] = 'm'
    entry[#entry + 1] = reply
  end
  if (result == 1 or result == 0) and a > 0 then
    local ack = acks[a]
    if not ack then
      ack = {KEYS[base + n_replies + a], group}
      acks[a] = ack
    end
    ack[#ack + 1] = id
  end
end
for r, entry in pairs(entries) do
  redis.call('XADD', unpack(entry))
  redis.call('PEXPIRE', KEYS[base + r], reply_ttl)
end
for _, ack in pairs(acks) do redis.call('XACK', unpack(ack)) end
return results
