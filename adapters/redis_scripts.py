"""The Lua scripts of :class:`adapters.redis.RedisStore`: one atomic script per operation.

Each touches the keys of one user only (one Cluster slot), reads the time from the server (so
every worker agrees on expiry) and is registered once per client; the store reloads a script
that a ``SCRIPT FLUSH``, a restart or a failover removed (NOSCRIPT) transparently. The index
of deadlines' scripts touch the index's keys only (a slot of their own) and take the time as
an argument: the engine's clock, not the server's.

A session value is ``b"<version>.<tag>:" + payload`` (the tag names the write): a script reads
the version with one ``string.match`` and never decodes msgpack.
"""

from __future__ import annotations

import re

# -- the session value layout: one definition, read the same way by Python and by Lua ----------
#: ``b"<version>.<tag>:" + payload``: a version of 1 to VERSION_DIGITS decimal digits with no
#: leading zero, a dot, a tag of TAG_DIGITS lowercase hex digits naming the write, a colon.
#: Anything else is foreign bytes: version 0, no tag, the whole value as payload.
VERSION_DIGITS = 15
TAG_DIGITS = 8
_TAG_CHARACTER = "[0-9a-f]"  # the same class in a Python regex and in a Lua pattern
_PAYLOAD_OFFSET = 1 + TAG_DIGITS + 1  # after the digits: the dot, the tag, the colon
#: The Python side (:func:`adapters.redis_ops.split_value`).
VALUE_PREFIX = re.compile(
    rb"^([1-9][0-9]{0,%d})\.(%s{%d}):" % (VERSION_DIGITS - 1, _TAG_CHARACTER.encode(), TAG_DIGITS)
)
_LUA_PREFIX = "^([1-9]%d*)%.(" + _TAG_CHARACTER * TAG_DIGITS + "):"

# Shared Lua: the server's time in ms, and the version of a session value (0 for none).
_PRELUDE = f"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A value is "<version>.<tag>:<payload>" (see VALUE_PREFIX). Bytes without that prefix
-- (written by something else) are version 0, no tag, the whole value as payload, exactly as
-- RedisStore reads them.
local function split(value)
  local digits, tag = string.match(value, '{_LUA_PREFIX}')
  if digits and #digits <= {VERSION_DIGITS} then
    return tonumber(digits), tag, string.sub(value, #digits + {_PAYLOAD_OFFSET + 1})
  end
  return 0, '', value
end
"""

# Seen message ids (needs the store's constants, see scripts()). An id is kept as the first 16
# hex digits of its SHA-1: 64 bits, so two ids of one user's last DEDUPE_LIMIT collide with a
# chance of about DEDUPE_LIMIT^2 / 2^65. WhatsApp's ids run 60 to 80 characters, and one member
# over 64 bytes (zset-max-listpack-value) turns the whole sorted set into a skiplist (about
# 900 bytes more for a user with one id). RAW_IDS keeps ids as they came (release 0.1.0's
# form, for a rolling deploy); ids in either form are found.
_SEEN_IDS = """
local function digest(message_id)
  return string.sub(redis.sha1hex(message_id), 1, 16)
end
local function id_member(message_id)
  if RAW_IDS then return message_id end
  return digest(message_id)
end
local function seen(key, message_id, ttl_ms, now)
  if message_id == '' then return false end
  local at = redis.call('ZSCORE', key, digest(message_id))
  if not at then at = redis.call('ZSCORE', key, message_id) end
  return at ~= false and tonumber(at) > now - ttl_ms
end
"""

# KEYS[1] session, KEYS[2] seen, KEYS[3] lock; ARGV[1] message id ('' for none)
# returns {session value or nil, 1 if the message id was seen else 0, 1 if locked else 0}
_LOAD = """
local value = redis.call('GET', KEYS[1])
local was_seen = seen(KEYS[2], ARGV[1], DEDUPE_TTL, now_ms()) and 1 or 0
return {value, was_seen, redis.call('EXISTS', KEYS[3])}
"""

# KEYS[1] session, KEYS[2] seen, KEYS[3] lock
# ARGV[1] owner token, ARGV[2] lock ttl (ms), ARGV[3] message id ('' for none)
# returns nil if the lock is taken, else LOAD's reply (taken now, so locked = 1)
_LOCK_AND_LOAD = """
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local value = redis.call('GET', KEYS[1])
local was_seen = seen(KEYS[2], ARGV[3], DEDUPE_TTL, now_ms()) and 1 or 0
return {value, was_seen, 1}
"""

# KEYS[1] session, KEYS[2] history, KEYS[3] seen, KEYS[4] lock
# ARGV[1] expected version, ARGV[2] new value (b"<version>.<tag>:" + payload), ARGV[3] ttl (ms),
# ARGV[4] history entry, tagged ('' for none), ARGV[5] message id ('' for none),
# ARGV[6] owner token ('' for none), ARGV[7] expected tag ('' for any), ARGV[8] lease (ms) to
# give the owner with the save ('' for none), ARGV[9] flags: 'r' to release the owner's lock
# after saving, 't' if this is a retry of the same write.
# The store's limits are constants of its copy of the script (:func:`scripts`).
# returns {status, current value or nil}: status 'saved', 'duplicate', 'locked' or 'conflict'
# (checked in that order; on anything but 'saved' nothing changed). A retry whose first attempt
# landed (its value is stored, or its tagged history entry is listed) is 'saved' again; if it
# asked for the lease and cannot have it now, the reply is {'saved', 'unleased'}.
_SAVE = """
local current = redis.call('GET', KEYS[1])
local flags = ARGV[9]
if string.find(flags, 't', 1, true) then
  local mine = current == ARGV[2]
  if mine or (ARGV[4] ~= '' and redis.call('LPOS', KEYS[2], ARGV[4])) then
    if ARGV[8] == '' then return {'saved', false} end
    local holder = redis.call('GET', KEYS[4])
    if mine and (not holder or holder == ARGV[6]) then
      redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[8])
      return {'saved', false}
    end
    -- It landed, but the lease asked for is another worker's now, or the state moved on.
    return {'saved', 'unleased'}
  end
end
local now = now_ms()
if seen(KEYS[3], ARGV[5], DEDUPE_TTL, now) then return {'duplicate', current} end
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[6] then return {'locked', current} end
local expected = tonumber(ARGV[1])
if expected == 0 then
  if current then return {'conflict', current} end  -- even bytes this store did not write
else
  local version, tag = split(current or '')
  if version ~= expected or (ARGV[7] ~= '' and tag ~= ARGV[7]) then
    return {'conflict', current}
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[4])
  redis.call('LTRIM', KEYS[2], 0, HISTORY_LIMIT - 1)
  redis.call('PEXPIRE', KEYS[2], HISTORY_TTL)
end
if ARGV[5] ~= '' then
  -- Scores rise with every id, so trimming by rank drops the oldest even when ids come
  -- within one millisecond (ties would be ordered by the member's bytes: a digest's).
  local at = now
  local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')[2]
  if newest and tonumber(newest) >= at then at = tonumber(newest) + 1 end
  redis.call('ZADD', KEYS[3], at, id_member(ARGV[5]))
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - DEDUPE_TTL)
  local extra = redis.call('ZCARD', KEYS[3]) - DEDUPE_LIMIT
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1) end
  redis.call('PEXPIRE', KEYS[3], DEDUPE_TTL)
end
if holder and holder == ARGV[6] and string.find(flags, 'r', 1, true) then
  redis.call('DEL', KEYS[4])
elseif ARGV[8] ~= '' then
  redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[8])
end
return {'saved', false}
"""


# KEYS[1] lock; ARGV[1] owner token. Returns 1 if released, 0 if the lock is not the owner's.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] lock; ARGV[1] owner token, ARGV[2] ttl (ms). Returns 1 if extended, else 0.
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1] lock. Returns {owner or nil, ttl left (ms)}.
LOCK_INFO = """
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] session, KEYS[2] quarantine
# ARGV[1] the payload the caller read, ARGV[2] quarantine entry, ARGV[3] per-user limit
# returns 1 if the session still held exactly that payload and was moved, else 0
QUARANTINE = (
    _PRELUDE
    + """
if redis.call('LPOS', KEYS[2], ARGV[2]) then return 1 end  -- a retry: it is done already
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local _, _, payload = split(current)
if payload ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
return 1
"""
)


# -- the index of deadlines (adapters.redis_keys): every key under one hash tag, one slot ------
# The scripts take the index's keys in the layout's order: KEYS[1..n] its shards, KEYS[n + 1]
# the claims (score: the claim's end), KEYS[n + 2] the claims' dues ("<shard> <due>"),
# KEYS[n + 3] the heads: each non-empty shard's soonest due, by shard number. The heads are
# kept by every script that writes a shard (these alone do), so a claim reads only the shards
# with something due, and a claim with nothing due costs two reads, not one per shard.
# Times are the engine's clock, passed in (never the server's TIME, so a fake clock works on
# Redis too). Scores travel as the strings Redis writes them with and never become Lua numbers
# on their way back in: a Lua number prints with 14 digits, which would move a due.
_HEADS = """
local function set_head(heads, shard_key, shard)
  local first = redis.call('ZRANGE', shard_key, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('ZADD', heads, first[2], shard)
  else
    redis.call('ZREM', heads, shard)
  end
end
"""

# KEYS[1] the user's shard, KEYS[2] the heads; ARGV[1] due, ARGV[2] member, ARGV[3] shard number
INDEX_DUE = (
    _HEADS
    + """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
set_head(KEYS[2], KEYS[1], ARGV[3])
return false
"""
)

# The k-way merge of the due shards' entries, soonest first: a heap of each shard's next entry,
# {score, member, score as Redis wrote it, shard's key index}. A shard is read in pages of 1,
# 2, 4, ... up to 64 entries: a claim takes few entries from most shards, and many from few.
_MERGE = """
local pages, at, read, size = {}, {}, {}, {}
local function next_of(i, now)
  local page = pages[i]
  if page == nil or (at[i] > #page and #page == 2 * size[i]) then
    local offset = read[i] or 0
    size[i] = page == nil and 1 or math.min(2 * size[i], 64)
    page = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'WITHSCORES', 'LIMIT', offset, size[i])
    pages[i], at[i], read[i] = page, 1, offset + #page / 2
  end
  local p = at[i]
  if p > #page then return nil end
  at[i] = p + 2
  return {tonumber(page[p + 1]), page[p], page[p + 1], i}
end
local heap = {}
local function less(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end
local function push(e)
  heap[#heap + 1] = e
  local c = #heap
  while c > 1 do
    local p = math.floor(c / 2)
    if not less(heap[c], heap[p]) then break end
    heap[c], heap[p] = heap[p], heap[c]
    c = p
  end
end
local function pop()
  local top, last = heap[1], table.remove(heap)
  if #heap > 0 then
    heap[1] = last
    local p = 1
    while true do
      local l, m = 2 * p, p
      if l <= #heap and less(heap[l], heap[m]) then m = l end
      if l + 1 <= #heap and less(heap[l + 1], heap[m]) then m = l + 1 end
      if m == p then break end
      heap[p], heap[m] = heap[m], heap[p]
      p = m
    end
  end
  return top
end
local function soonest(shards, now, limit)
  for _, i in ipairs(shards) do
    local e = next_of(i, now)
    if e then push(e) end
  end
  local taken = {}
  while #taken < limit and #heap > 0 do
    local e = pop()
    taken[#taken + 1] = e
    local following = next_of(e[4], now)
    if following then push(following) end
  end
  return taken
end
local function in_batches(command, key, args)
  for s = 1, #args, 1000 do
    redis.call(command, key, unpack(args, s, math.min(s + 999, #args)))
  end
end
"""

# ARGV[1] now, ARGV[2] limit, ARGV[3] the claim's end (now + hold)
# returns {member, due, member, due, ...}: the entries taken, soonest first
CLAIM_DUE = (
    _HEADS
    + _MERGE
    + """
local n = #KEYS - 3
local claims, dues, heads = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local now, limit, held_until = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- Claims whose hold ran out (their ticker died) are due again, at their own due.
local returned = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', claims, '-inf', now)) do
  local held = redis.call('HGET', dues, member)
  if held then
    local shard, due = string.match(held, '^(%d+) (.+)$')
    if tonumber(due) > tonumber(now) then due = now end
    redis.call('ZADD', KEYS[tonumber(shard) + 1], due, member)
    returned[tonumber(shard) + 1] = true
  end
  redis.call('ZREM', claims, member)
  redis.call('HDEL', dues, member)
end
for i in pairs(returned) do set_head(heads, KEYS[i], i - 1) end
local shards = {}
for _, shard in ipairs(redis.call('ZRANGEBYSCORE', heads, '-inf', now)) do
  shards[#shards + 1] = tonumber(shard) + 1
end
local taken = soonest(shards, now, limit)
-- Only now move them (the pages' offsets held while reading), a few commands per batch.
local reply, removed, held, due_of = {}, {}, {}, {}
for _, e in ipairs(taken) do
  removed[e[4]] = removed[e[4]] or {}
  table.insert(removed[e[4]], e[2])
  held[#held + 1], held[#held + 2] = held_until, e[2]
  due_of[#due_of + 1], due_of[#due_of + 2] = e[2], (e[4] - 1) .. ' ' .. e[3]
  reply[#reply + 1], reply[#reply + 2] = e[2], e[3]
end
for i, members in pairs(removed) do
  in_batches('ZREM', KEYS[i], members)
  set_head(heads, KEYS[i], i - 1)
end
in_batches('ZADD', claims, held)
in_batches('HSET', dues, due_of)
return reply
"""
)

# KEYS[1] the claims, KEYS[2] the claims' dues; ARGV the members to settle. Returns nothing.
SETTLE_DUE = """
for _, member in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
end
return false
"""

# ARGV[1] now. Returns {indexed, due at now, claimed, the soonest due or false}.
DUE_STATS = """
local n = #KEYS - 3
local heads = KEYS[n + 3]
local indexed, due = 0, 0
for i = 1, n do indexed = indexed + redis.call('ZCARD', KEYS[i]) end
for _, shard in ipairs(redis.call('ZRANGEBYSCORE', heads, '-inf', ARGV[1])) do
  due = due + redis.call('ZCOUNT', KEYS[tonumber(shard) + 1], '-inf', ARGV[1])
end
local first = redis.call('ZRANGE', heads, 0, 0, 'WITHSCORES')
return {indexed, due, redis.call('ZCARD', KEYS[n + 1]), first[2] or false}
"""

# KEYS: the shards. Returns each shard's number of entries, in order.
INDEX_SIZES = """
local sizes = {}
for i = 1, #KEYS do sizes[i] = redis.call('ZCARD', KEYS[i]) end
return sizes
"""


# KEYS[1] history; ARGV the tagged entries to import, oldest first. Pushed, trimmed and given
# the history's TTL in one step; 0 (nothing pushed) when the newest is listed already, as after
# a retry whose first attempt landed.
IMPORT_HISTORY = """
local newest = ARGV[#ARGV]
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, HISTORY_LIMIT + #ARGV)) do
    if item == newest then return 0 end
end
for i = 1, #ARGV do redis.call('LPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], 0, HISTORY_LIMIT - 1)
redis.call('PEXPIRE', KEYS[1], HISTORY_TTL)
return #ARGV
"""


def scripts(
    *,
    history_limit: int,
    history_ttl_ms: int,
    dedupe_limit: int,
    dedupe_ttl_ms: int,
    raw_message_ids: bool = False,
) -> dict[str, str]:
    """The Lua of every store operation, by name, with one store's limits written in as
    constants: they are the same on every call, so they need not travel with each one (a
    save sends 9 arguments, not 13). Stores with other limits get other scripts (other SHAs),
    which Redis keeps side by side. ``raw_message_ids``: keep seen ids as they came, not as
    digests (``legacy_format``)."""
    constants = (
        f"local HISTORY_LIMIT = {int(history_limit)}\n"
        f"local HISTORY_TTL = {int(history_ttl_ms)}\n"
        f"local DEDUPE_LIMIT = {int(dedupe_limit)}\n"
        f"local DEDUPE_TTL = {int(dedupe_ttl_ms)}\n"
        f"local RAW_IDS = {'true' if raw_message_ids else 'false'}\n"
    )
    with_ids = constants + _PRELUDE + _SEEN_IDS
    return {
        "load": with_ids + _LOAD,
        "lock_and_load": with_ids + _LOCK_AND_LOAD,
        "save": with_ids + _SAVE,
        "import_history": constants + IMPORT_HISTORY,
        "release": RELEASE,
        "extend": EXTEND,
        "lock_info": LOCK_INFO,
        "quarantine": QUARANTINE,
        "index_due": INDEX_DUE,
        "claim_due": CLAIM_DUE,
        "settle_due": SETTLE_DUE,
        "due_stats": DUE_STATS,
        "index_sizes": INDEX_SIZES,
    }
