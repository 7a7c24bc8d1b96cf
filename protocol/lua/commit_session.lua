-- Commit step 1 of 4, in one session's slot: the session's writes, once.
--
-- Per message, KEYS: the session hash, the connection's outbox key (same slot).
-- ARGV: session TTL ms, closing TTL ms, now (ms since the epoch), then per
-- message: seq, the connection's reply address, outbox ('' = check only: the
-- session was read, not written), flags ('c': the connection is gone; 'o': the
-- session is keyed by this connection, no other can use it), number of fields
-- to set and the field/value pairs, number of fields to delete and the fields.
--
-- The outbox is the message's encoded outcome (reply and group sends), written
-- with the session so that the later steps can be finished by whichever worker
-- handles the message again. It lives in the session hash itself, so that
-- checking and writing it costs no command of its own (one HMGET, one HSET per
-- message): field '~s:<reply address>' is the connection's last committed seq,
-- '~o:<reply address>' its outcome — or, when that is larger than INLINE bytes,
-- the outbox key holds "<seq> <outcome>" instead. Fields starting with '~' are
-- Switchyard's (workers hide them from consumers):
--   '~x' when the session key expires (ms): the TTL is refreshed only once a
--        quarter of it has run down, not at every message;
--   '~c' the connections that are gone, "<reply> <deadline>" pairs in deadline
--        order: their '~s:'/'~o:' fields are deleted once the deadline has
--        passed (a hash field has no TTL of its own before Redis 7.4).
-- On the hot path the outcome is never copied into a new string: it goes from
-- ARGV to HSET as it came, and the HMGET reads only short fields (measured in
-- docs/benchmarks.md, "Per-message cost"); only the two field names are built.
-- Returns per message: 1 go on; 0 already done (a later message of the
-- connection is committed, or this one and its outcome is gone); or
-- "<seq> <outcome>" when this very message was committed before: finish it
-- with that outcome.
local INLINE = 1024
local session_ttl, closing_ttl, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local function ms(n) return string.format('%.0f', n) end

-- Drops the fields of connections gone before `now`; returns the fields to
-- delete and what '~c' becomes (false: delete it).
local function purge(closed)
  local gone, keep = {}, {}
  for reply, deadline in string.gmatch(closed, '(%S+) (%d+)') do
    if tonumber(deadline) < now then
      gone[#gone + 1] = '~s:' .. reply
      gone[#gone + 1] = '~o:' .. reply
    else
      keep[#keep + 1] = reply .. ' ' .. deadline
    end
  end
  if #keep == 0 then return gone, false end
  return gone, table.concat(keep, ' ')
end

-- Messages 1..count (KEYS 2m-1 and 2m, ARGV from 4 on): their results, and
-- the index of the first ARGV after them (`commit_fused.lua` goes on there).
local function commit_sessions(count)
  local i = 4
  local results = {}
  for m = 1, count do
    local session, outbox = KEYS[2*m-1], KEYS[2*m]
    local seq_text, reply, blob, flags = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
    local seq = tonumber(seq_text)
    local n_set = tonumber(ARGV[i+4])
    local sets = i + 5
    local n_del = tonumber(ARGV[sets + 2*n_set])
    local dels = sets + 2*n_set + 1
    i = dels + n_del
    local closing, own = string.find(flags, 'c', 1, true), string.find(flags, 'o', 1, true)
    local seq_field, outcome_field = '~s:' .. reply, '~o:' .. reply
    local got = redis.call('HMGET', session, seq_field, '~x', '~c')
    local prior_seq, expires, closed = tonumber(got[1]) or 0, tonumber(got[2]), got[3]
    if prior_seq > seq then
      results[m] = 0
    elseif prior_seq == seq then
      local outcome = redis.call('HGET', session, outcome_field)
      if outcome and outcome ~= '' then
        results[m] = seq_text .. ' ' .. outcome
      else
        results[m] = redis.call('GET', outbox) or 0
      end
    else
      local wrote = blob ~= ''
      if wrote then
        local inline = blob
        if #blob > INLINE then
          redis.call('SET', outbox, seq_text .. ' ' .. blob, 'PX', session_ttl)
          inline = ''
        end
        redis.call('HSET', session, seq_field, seq_text, outcome_field, inline,
          unpack(ARGV, sets, sets + 2*n_set - 1))
        if n_del > 0 then redis.call('HDEL', session, unpack(ARGV, dels, dels + n_del - 1)) end
      end
      -- The key exists (or was just written): keep it alive.
      if (wrote or got[1] or expires) and (not expires or expires - now < session_ttl * 3 / 4) then
        redis.call('HSET', session, '~x', ms(now + session_ttl))
        redis.call('PEXPIRE', session, session_ttl)
      end
      -- Rare: a connection of a shared session is gone, or gone ones are due.
      local first = closed and tonumber(string.match(closed, '^%S+ (%d+)'))
      local due = closed and (not first or first < now)
      local listed = closing and not own and (wrote or got[1])
      if due or listed then
        if due then
          local gone, rest = purge(closed)
          if #gone > 0 then redis.call('HDEL', session, unpack(gone)) end
          closed = rest
        end
        if listed then
          local entry = reply .. ' ' .. ms(now + closing_ttl)
          closed = closed and (closed .. ' ' .. entry) or entry
        end
        if closed then
          redis.call('HSET', session, '~c', closed)
        else
          redis.call('HDEL', session, '~c')
        end
      end
      results[m] = 1
    end
    if closing then
      -- Nothing else uses the session of a connection that is gone.
      if own then redis.call('PEXPIRE', session, closing_ttl, 'LT') end
      redis.call('PEXPIRE', outbox, closing_ttl, 'LT')
    end
  end
  return results, i
end

return (commit_sessions(#KEYS / 2))
