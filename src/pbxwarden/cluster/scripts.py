"""The Lua scripts that change shared state: each change is one atomic script.

Two nodes changing the same ban or count at once must not lose either change, so no
value is read by Python, changed and written back: the script does it inside Redis,
which runs one script at a time. Scripts that change a ban or a lock also ``PUBLISH``
the change, in the same step, so that no node hears of a change that did not happen.

Times are the nodes' wall clocks (seconds since the epoch, passed in): the nodes of a
PBX keep their clocks in step (NTP) as every SIP server must for its records.
"""

from __future__ import annotations

# How many ended bans one script call forgets at most (Lua's unpack has a stack limit).
_TRIM = """
local function trim(hash, zset, now)
  local ended = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, 500)
  if #ended > 0 then
    redis.call('HDEL', hash, unpack(ended))
    redis.call('ZREM', zset, unpack(ended))
  end
end
"""

# KEYS: bans, bans:until, unbans, unbans:until
# ARGV: address, until, created_at, record (JSON), now, channel, message
# 1 when the ban is new or longer than the shared one (and announced), else 0; a ban
# made before the address was last lifted is not brought back.
BAN = (
    _TRIM
    + """
local now = tonumber(ARGV[5])
trim(KEYS[1], KEYS[2], now)
trim(KEYS[3], KEYS[4], now)
local lifted = redis.call('HGET', KEYS[3], ARGV[1])
if lifted and tonumber(ARGV[3]) <= tonumber(lifted) then
  return 0
end
local current = redis.call('ZSCORE', KEYS[2], ARGV[1])
if current and tonumber(current) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""
)

# KEYS: bans, bans:until, unbans, unbans:until
# ARGV: address, lifted_at, keep_until, now, channel, message
# Lifts the shared ban if it was made before ``lifted_at`` and remembers the lift until
# ``keep_until`` (a node that missed it must not push the ban back); announced when
# anything changed. 1 if announced.
UNBAN = (
    _TRIM
    + """
local now = tonumber(ARGV[4])
local at = tonumber(ARGV[2])
trim(KEYS[1], KEYS[2], now)
trim(KEYS[3], KEYS[4], now)
local changed = 0
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record and tonumber(cjson.decode(record)['created_at']) <= at then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  changed = 1
end
local previous = redis.call('HGET', KEYS[3], ARGV[1])
if not previous or tonumber(previous) < at then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
  changed = 1
end
if changed == 1 then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return changed
"""
)

# KEYS: bans, bans:until, unbans, unbans:until, locks
# ARGV: now, forget_locks_before
# Everything shared, ended entries forgotten first: {bans (flat hash), lifts, locks}.
SNAPSHOT = (
    _TRIM
    + """
local now = tonumber(ARGV[1])
trim(KEYS[1], KEYS[2], now)
trim(KEYS[3], KEYS[4], now)
local locks = redis.call('HGETALL', KEYS[5])
local before = tonumber(ARGV[2])
local kept = {}
for i = 1, #locks, 2 do
  if tonumber(cjson.decode(locks[i + 1])['until']) < before then
    redis.call('HDEL', KEYS[5], locks[i])
  else
    kept[#kept + 1] = locks[i]
    kept[#kept + 1] = locks[i + 1]
  end
end
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[3]), kept}
"""
)

# KEYS: one extension's failures (a sorted set: member "uid|unbannable|address",
# scored by time)
# ARGV: now, window, count_after, member, max_kept
# Adds the failure, forgets those older than the window (and the oldest past max_kept),
# and answers {failures after count_after, any from an unbannable address (0/1),
# {distinct addresses, first seen first}}. ``count_after`` is the window's start or the
# extension's last password change, whichever is later: guesses of a password that no
# longer exists do not count (they stay stored: another node may know of no change).
COUNT_FAILURE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[4])
local kept = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[5])
if kept > max then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, kept - max - 1)
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], '+inf')
local seen, sources, unbannable = {}, {}, 0
for _, member in ipairs(members) do
  local flag, address = string.match(member, '^[^|]*|([01])|(.*)$')
  if flag == '1' then
    unbannable = 1
  end
  if address and not seen[address] then
    seen[address] = true
    sources[#sources + 1] = address
  end
end
return {#members, unbannable, sources}
"""

# KEYS: locks (a hash "tenant/number" -> JSON)
# ARGV: field, created_at, until, record (JSON), channel, message
# Keeps the newest lock of each extension; the same lock ending earlier is a lift and
# wins too. 1 when changed (and announced).
SET_LOCK = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local c = cjson.decode(current)
  local created, ends = tonumber(ARGV[2]), tonumber(ARGV[3])
  local c_created, c_ends = tonumber(c['created_at']), tonumber(c['until'])
  if c_created > created or (c_created == created and c_ends <= ends) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# KEYS: the extension's and the tenant's costly calls in progress (sorted sets: member a
# reservation token, score when it lapses unless refreshed)
# ARGV: token, now, lapses_at, per-extension limit, per-tenant limit
# {1, count} reserved (the extension's count with it), or {0, "extension"|"tenant",
# count}: the limit is reached on the PBX's nodes together. Lapsed reservations (a node
# that died with calls up, a call that never started) are forgotten first.
# The concurrency check both reservations make first (``now`` set; KEYS[1], KEYS[2] and
# ARGV[4], ARGV[5] as below): lapsed reservations forgotten, then either limit reached.
_CONCURRENCY_CHECK = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local e = redis.call('ZCARD', KEYS[1])
if e >= tonumber(ARGV[4]) then
  return {0, 'extension', e}
end
local t = redis.call('ZCARD', KEYS[2])
if t >= tonumber(ARGV[5]) then
  return {0, 'tenant', t}
end
"""

RESERVE_CALL = (
    """
local now = tonumber(ARGV[2])"""
    + _CONCURRENCY_CHECK
    + """redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('EXPIRE', KEYS[2], 86400)
return {1, e + 1}
"""
)

# KEYS: as RESERVE_CALL; ARGV: lapses_at, token... (those still held: pushed forward;
# a token no longer there is not brought back)
HOLD_CALLS = """
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
  redis.call('ZADD', KEYS[2], 'XX', ARGV[1], ARGV[i])
end
return #ARGV - 1
"""

# KEYS: as RESERVE_CALL; ARGV: token
RELEASE_CALL = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# -- rates (pbxwarden.cluster.rates) -----------------------------------------------------
# KEYS: as RESERVE_CALL, then the extension's costly attempts of the last hour (a sorted
# set: member the reservation token, scored by when), then, when the destination counts
# for the same-prefix limit, the extension's attempts to that prefix in its window, then,
# when the destination's range is followed (dear), the tenant's attempts into the range
# (member "extension|e164|odd", scored by the latest: repeats are one entry) and the
# range's marks (a hash:
# "test" -> "at extension e164", "blocked" -> "until why")
# ARGV: token, now, lapses_at, per-extension limit, per-tenant limit, calls per minute,
# calls per hour, same-prefix calls, minute start, hour start, prefix window start, then
# with a range: the member, the range window start, the most entries kept per range,
# the most answered (newest first: the patterns count distinct extensions and numbers)
# A range found pumped refuses first (as on one node, where a pattern comes before the
# limits), then concurrency as RESERVE_CALL, the rates, the same prefix; all checked
# before anything is added, so a refused attempt counts nowhere (as on one node, where
# only an allowed attempt is recorded). Answers {1, calls, minute, hour, prefix, test,
# 1 if the range member is new, {member, score}...: the range's entries before this
# one} (counts with this one), or {0, "extension"|"tenant"|"minute"|"hour"|"prefix",
# count}, or {0, "blocked",
# until, why}.
RESERVE_ATTEMPT = (
    """
local now = tonumber(ARGV[2])
local ranged = #KEYS > 4
if ranged then
  local blocked = redis.call('HGET', KEYS[6], 'blocked')
  if blocked then
    local untilv, why = string.match(blocked, '^(%S+) (.*)$')
    if untilv and tonumber(untilv) > now then
      return {0, 'blocked', untilv, why}
    end
  end
end"""
    + _CONCURRENCY_CHECK
    + """redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[10])
local m = redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[9], '+inf')
if m >= tonumber(ARGV[6]) then
  return {0, 'minute', m}
end
local h = redis.call('ZCARD', KEYS[3])
if h >= tonumber(ARGV[7]) then
  return {0, 'hour', h}
end
local p = 0
if #KEYS > 3 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[11])
  p = redis.call('ZCARD', KEYS[4])
  if p >= tonumber(ARGV[8]) then
    return {0, 'prefix', p}
  end
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  redis.call('EXPIRE', KEYS[4], math.ceil(now - tonumber(ARGV[11])) + 60)
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('EXPIRE', KEYS[2], 86400)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[3], math.ceil(now - tonumber(ARGV[10])) + 60)
local out = {1, e + 1, m + 1, h + 1, p + 1}
if ranged then
  local start = ARGV[13]
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', start)
  local seen = redis.call(
    'ZREVRANGEBYSCORE', KEYS[5], '+inf', '(' .. start, 'WITHSCORES', 'LIMIT', 0, ARGV[15]
  )
  out[6] = redis.call('HGET', KEYS[6], 'test') or ''
  out[7] = redis.call('ZADD', KEYS[5], ARGV[2], ARGV[12])
  for i = 1, #seen do
    out[#out + 1] = seen[i]
  end
  local kept, max = redis.call('ZCARD', KEYS[5]), tonumber(ARGV[14])
  if kept > max then
    redis.call('ZREMRANGEBYRANK', KEYS[5], 0, kept - max - 1)
  end
  redis.call('EXPIRE', KEYS[5], math.ceil(now - tonumber(start)) + 60)
end
return out
"""
)

# KEYS: the reservation keys of one admitted attempt (as RESERVE_ATTEMPT's)
# ARGV: token, the range member ("" without a range, or when it was there before)
# The attempt was refused after all: it counts nowhere.
WITHDRAW_ATTEMPT = """
for i = 1, math.min(#KEYS, 4) do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
if #KEYS > 4 and ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[5], ARGV[2])
end
return 1
"""

# KEYS: a range's marks (hash); ARGV: test ("" or "at extension e164"), blocked until
# (0: none), why, keep (seconds)
# The first test call seen is kept (as on one node); a block is kept if it ends later.
MARK_RANGE = """
if ARGV[1] ~= '' then
  redis.call('HSETNX', KEYS[1], 'test', ARGV[1])
end
local untilv = tonumber(ARGV[2])
if untilv > 0 then
  local current = redis.call('HGET', KEYS[1], 'blocked')
  local c = current and tonumber(string.match(current, '^(%S+)')) or 0
  if untilv > c then
    redis.call('HSET', KEYS[1], 'blocked', ARGV[2] .. ' ' .. ARGV[3])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# -- alerts (pbxwarden.cluster.alerts) ------------------------------------------------------
# KEYS: the alert's dedupe key; ARGV: severity rank (0 warning, 1 critical), window (ms)
# 1 when this node is the one to notify (no node sent this alert, or only at a lower
# severity: an escalation is told), else 0. SET NX in spirit, with the severity kept so
# that a critical repeat of a warning is still sent once.
CLAIM_ALERT = """
local sent = redis.call('GET', KEYS[1])
if sent and tonumber(sent) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: the alert's dedupe key; ARGV: the severity rank this node claimed
# Nothing was delivered: another node's next occurrence may try again.
UNCLAIM_ALERT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# -- spend (pbxwarden.cluster.spend) ----------------------------------------------------
# Each owner (an extension "tenant/number", or a tenant) has two keys: a sorted set of
# its finished calls' costs (member "uid|call|cost", scored by the call's end) and a
# hash of its answered calls in progress (field "uid|call" -> "rate answered
# refreshed"). ``uid`` names the node process that wrote the entry, so that a node
# reading the totals leaves out its own (its guard counts those itself, exactly).

# KEYS: for each change 4 keys (extension's finished, extension's live, tenant's
# finished, tenant's live)
# ARGV: now, keep (seconds a finished entry is kept), then 4 per change: kind ("live" or
# "end"), field, value (live: "rate answered refreshed"; end: the finished member, or ""
# for no cost), score (end: when the call ended)
# A live entry is (re)written; an ended call leaves the live hash and, if it cost
# anything, enters the finished sets (ZADD of the same member again changes nothing:
# replaying a batch after an outage is harmless).
SPEND_PUSH = """
local now, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local changes = (#ARGV - 2) / 4
for i = 0, changes - 1 do
  local kind, field, value = ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i]
  local score = ARGV[6 + 4 * i]
  local k = 4 * i
  for j = 0, 1 do
    local finished, live = KEYS[k + 1 + 2 * j], KEYS[k + 2 + 2 * j]
    if kind == 'live' then
      redis.call('HSET', live, field, value)
    else
      redis.call('HDEL', live, field)
      if value ~= '' then
        redis.call('ZADD', finished, score, value)
      end
    end
    redis.call('ZREMRANGEBYSCORE', finished, '-inf', now - keep)
    redis.call('EXPIRE', finished, math.ceil(keep) + 3600)
    redis.call('EXPIRE', live, math.ceil(keep) + 3600)
  end
end
return changes
"""

# KEYS: for each owner 2 keys (finished, live)
# ARGV: now, uid (the reading node's: its entries are left out), lapse (a live entry not
# refreshed for that long belongs to a node that died: it becomes a finished call, its
# cost counted up to its last refresh), hour, day (the windows, seconds)
# For each owner 4 strings: the other nodes' finished spend in the last hour, in the last
# day, and their answered calls in progress as the sum of rates (per minute) and of rate
# x answer time, so that the reader can price them at any later moment:
# (now * rate - rate_at) / 60.
SPEND_READ = """
local now, uid, lapse = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local hour, day = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
local mine = uid .. '|'
for i = 1, #KEYS, 2 do
  local finished, live = KEYS[i], KEYS[i + 1]
  local rate, rate_at = 0, 0
  local entries = redis.call('HGETALL', live)
  for j = 1, #entries, 2 do
    local field, value = entries[j], entries[j + 1]
    local r, answered, refreshed = string.match(value, '^(%S+) (%S+) (%S+)$')
    r, answered, refreshed = tonumber(r), tonumber(answered), tonumber(refreshed)
    if r == nil or answered == nil or refreshed == nil then
      redis.call('HDEL', live, field)
    elseif refreshed + lapse < now then
      local cost = math.max(0, refreshed - answered) * r / 60
      redis.call('HDEL', live, field)
      if cost > 0 then
        redis.call('ZADD', finished, refreshed, field .. '|' .. string.format('%.6f', cost))
      end
    elseif string.sub(field, 1, #mine) ~= mine then
      rate = rate + r
      rate_at = rate_at + r * answered
    end
  end
  redis.call('ZREMRANGEBYSCORE', finished, '-inf', now - day)
  local h, d = 0, 0
  local ended = redis.call('ZRANGEBYSCORE', finished, now - day, '+inf', 'WITHSCORES')
  for j = 1, #ended, 2 do
    local member, at = ended[j], tonumber(ended[j + 1])
    if string.sub(member, 1, #mine) ~= mine then
      local cost = tonumber(string.match(member, '|([^|]*)$')) or 0
      d = d + cost
      if at > now - hour then
        h = h + cost
      end
    end
  end
  out[#out + 1] = string.format('%.6f', h)
  out[#out + 1] = string.format('%.6f', d)
  out[#out + 1] = string.format('%.9g', rate)
  out[#out + 1] = string.format('%.17g', rate_at)
end
return out
"""

# -- suspensions (pbxwarden.cluster.suspensions) ----------------------------------------

# KEYS: suspensions (a hash "tenant/number" -> JSON {suspended, reason, at, by, node})
# ARGV: field, at, suspended (1/0), record (JSON), channel, message
# Keeps the newest change of each extension (a lift made at the same moment as a
# suspension wins). 1 when changed (and announced).
SET_SUSPENSION = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local c = cjson.decode(current)
  local at, c_at = tonumber(ARGV[2]), tonumber(c['at'])
  if c_at > at or (c_at == at and (not c['suspended'] or ARGV[3] == '1')) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# KEYS: suspensions; ARGV: forget lifts made before this time
# Every extension's last change, old lifts forgotten first (flat HGETALL).
SUSPENSIONS = """
local all = redis.call('HGETALL', KEYS[1])
local before = tonumber(ARGV[1])
local kept = {}
for i = 1, #all, 2 do
  local c = cjson.decode(all[i + 1])
  if not c['suspended'] and tonumber(c['at']) < before then
    redis.call('HDEL', KEYS[1], all[i])
  else
    kept[#kept + 1] = all[i]
    kept[#kept + 1] = all[i + 1]
  end
end
return kept
"""
