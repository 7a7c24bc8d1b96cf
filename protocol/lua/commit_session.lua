-- Commit step 1 of 4, in one session's slot: the session's writes, once.
--
-- Per message, KEYS: the session hash, the connection's outbox key (same slot).
-- ARGV: session TTL ms, closing TTL ms, now (ms since the epoch), then per
-- message: seq, the connection's reply address, outbox ('' = check only: the
-- session was read, not written), closing ('1': the connection is gone), own
-- ('1': the session is keyed by this connection, no other can use it), number
-- of fields to set and the field/value pairs, number of fields to delete and
-- the fields.
--
-- The outbox holds the message's sequence number and its encoded outcome
-- (reply and group sends), written with the session so that the later steps
-- can be finished by whichever worker handles the message again. It lives in
-- the session hash itself, field '~o:<reply address>' = "<seq> <outcome>", so
-- that checking and writing it costs no command of its own (one HMGET, one
-- HSET per message); an outcome larger than INLINE bytes goes to the outbox
-- key instead and the field holds "<seq>" alone. Fields starting with '~' are
-- Switchyard's (workers hide them from consumers):
--   '~x' when the session key expires (ms): the TTL is refreshed only once a
--        quarter of it has run down, not at every message;
--   '~c' the outbox fields of connections that are gone, "<reply> <deadline>"
--        pairs in deadline order, deleted once their deadline has passed (a
--        hash field has no TTL of its own before Redis 7.4).
-- Returns per message: 1 go on; 0 already done (a later message of the
-- connection is committed, or this one and its outcome is gone); or the stored
-- "<seq> <outcome>" when this very message was committed before: finish it
-- with that outcome.
local INLINE = 1024
local session_ttl, closing_ttl, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
local results = {}

local function ms(n) return string.format('%.0f', n) end

-- Drops the outbox fields of connections gone before `now`; returns the fields
-- to delete and what '~c' becomes (false: delete it).
local function purge(closed)
  local gone, keep = {}, {}
  for reply, deadline in string.gmatch(closed, '(%S+) (%d+)') do
    if tonumber(deadline) < now then
      gone[#gone + 1] = '~o:' .. reply
    else
      keep[#keep + 1] = reply .. ' ' .. deadline
    end
  end
  if #keep == 0 then return gone, false end
  return gone, table.concat(keep, ' ')
end

for m = 1, #KEYS / 2 do
  local session, outbox = KEYS[2*m-1], KEYS[2*m]
  local seq, reply, blob = tonumber(ARGV[i]), ARGV[i+1], ARGV[i+2]
  local closing, own = ARGV[i+3] == '1', ARGV[i+4] == '1'
  local n_set = tonumber(ARGV[i+5])
  local sets = i + 6
  local n_del = tonumber(ARGV[sets + 2*n_set])
  local dels = sets + 2*n_set + 1
  i = dels + n_del
  local field = '~o:' .. reply
  local got = redis.call('HMGET', session, field, '~x', '~c')
  local prior, expires, closed = got[1], tonumber(got[2]), got[3]
  local prior_seq = prior and tonumber(string.match(prior, '^(%d+)')) or 0
  if prior_seq > seq then
    results[m] = 0
  elseif prior_seq == seq then
    if string.find(prior, ' ', 1, true) then
      results[m] = prior
    else
      results[m] = redis.call('GET', outbox) or 0
    end
  else
    local hset, hdel = {}, {}
    if blob ~= '' then
      for k = sets, sets + 2*n_set - 1 do hset[#hset + 1] = ARGV[k] end
      for k = dels, dels + n_del - 1 do hdel[#hdel + 1] = ARGV[k] end
      if #blob <= INLINE then
        hset[#hset + 1] = field
        hset[#hset + 1] = seq .. ' ' .. blob
      else
        hset[#hset + 1] = field
        hset[#hset + 1] = tostring(seq)
        redis.call('SET', outbox, seq .. ' ' .. blob, 'PX', session_ttl)
      end
    end
    -- The key exists (or is being written): keep it alive.
    local exists = blob ~= '' or prior or expires
    local refresh = exists and (not expires or expires - now < session_ttl * 3 / 4)
    if refresh then
      hset[#hset + 1] = '~x'
      hset[#hset + 1] = ms(now + session_ttl)
    end
    if closed then
      local first = tonumber(string.match(closed, '^%S+ (%d+)'))
      if not first or first < now then
        local gone, rest = purge(closed)
        for _, f in ipairs(gone) do hdel[#hdel + 1] = f end
        if rest then
          closed = rest
          hset[#hset + 1] = '~c'
          hset[#hset + 1] = rest
        else
          closed = nil
          hdel[#hdel + 1] = '~c'
        end
      end
    end
    if closing and not own and (prior or blob ~= '') then
      local entry = reply .. ' ' .. ms(now + closing_ttl)
      hset[#hset + 1] = '~c'
      hset[#hset + 1] = closed and (closed .. ' ' .. entry) or entry
    end
    if #hdel > 0 then redis.call('HDEL', session, unpack(hdel)) end
    if #hset > 0 then redis.call('HSET', session, unpack(hset)) end
    -- After the HSET: a key it created gets its expiry too.
    if refresh then redis.call('PEXPIRE', session, session_ttl) end
    results[m] = 1
  end
  if closing then
    -- Nothing else uses the session of a connection that is gone.
    if own then redis.call('PEXPIRE', session, closing_ttl, 'LT') end
    if #blob > INLINE or (prior and not string.find(prior, ' ', 1, true)) then
      redis.call('PEXPIRE', outbox, closing_ttl, 'LT')
    end
  end
end
return results
