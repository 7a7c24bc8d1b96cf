-- Commit step 1 of 4, in one session's slot: the session's writes, once.
--
-- Per message, KEYS: the session hash, the connection's outbox (same slot).
-- ARGV: session TTL ms, outbox TTL ms, closing TTL ms, then per message:
--   seq, outbox ('' = check only: the session was read, not written),
--   closing ('1': the connection is gone), number of fields to set and the
--   field/value pairs, number of fields to delete and the fields.
-- The outbox holds "<seq> <outcome>": the message's sequence number and its
-- encoded outcome (reply and group sends), written with the session so that the
-- later steps can be finished by whichever worker handles the message again.
-- Returns per message: 1 go on; 0 already done (a later message of the
-- connection is committed); or the stored outbox "<seq> <outcome>" when this
-- very message was committed before: finish it with that outcome.
local session_ttl, outbox_ttl, closing_ttl = ARGV[1], ARGV[2], ARGV[3]
local i = 4
local results = {}
for m = 1, #KEYS / 2 do
  local session, outbox = KEYS[2*m-1], KEYS[2*m]
  local seq, blob, closing = tonumber(ARGV[i]), ARGV[i+1], ARGV[i+2] == '1'
  local n_set = tonumber(ARGV[i+3])
  local sets = i + 4
  local n_del = tonumber(ARGV[sets + 2*n_set])
  local dels = sets + 2*n_set + 1
  i = dels + n_del
  local prior = redis.call('GET', outbox)
  local prior_seq = prior and tonumber(string.match(prior, '^(%d+)')) or 0
  if prior_seq > seq then
    results[m] = 0
  elseif prior_seq == seq then
    results[m] = prior
  else
    if blob ~= '' then
      if n_set > 0 then redis.call('HSET', session, unpack(ARGV, sets, sets + 2*n_set - 1)) end
      if n_del > 0 then redis.call('HDEL', session, unpack(ARGV, dels, dels + n_del - 1)) end
      redis.call('SET', outbox, seq .. ' ' .. blob, 'PX', outbox_ttl)
    end
    redis.call('PEXPIRE', session, session_ttl)
    results[m] = 1
  end
  if closing then redis.call('PEXPIRE', outbox, closing_ttl, 'LT') end
end
return results
