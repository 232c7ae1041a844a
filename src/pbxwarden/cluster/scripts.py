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
RESERVE_CALL = """
local now = tonumber(ARGV[2])
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
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('EXPIRE', KEYS[2], 86400)
return {1, e + 1}
"""

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
