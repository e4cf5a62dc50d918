//! The Lua every script starts with: the key names, Redis's clock, the
//! per-method gauges and counters, the events, and the moves of a task
//! between the sets of its states.

/// Keys, clock, counters and events. `KEYS[1]` is the key base
/// (`{prefix}:`), from which every key is derived, all in its hash tag.
pub(super) const COMMON: &str = r#"
local B = KEYS[1]
local LEASES, SCHED, DEADS, FIN = B .. 'leases', B .. 'scheduled', B .. 'dead', B .. 'finished'
local METHODS, STATS, COUNTS, SEQ = B .. 'methods', B .. 'stats', B .. 'counts', B .. 'seq'
local LIMITS, BUCKETS, EVENTS = B .. 'limits', B .. 'buckets', B .. 'events'
-- Ready tasks are scored by priority band x 2^42 + the order they became
-- available (2^42 sequence numbers per band; the score stays exact in a
-- double).
local BAND = 4398046511104
-- Finished tasks are scored by the ms their record expires (the same
-- retention for all: newest last) x 1024 + a tie-breaker.
local FIN_SCALE = 1024
local LIVE = {scheduled = true, queued = true, leased = true, dead = true}

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function task_key(ref) return B .. 'task:' .. ref end
-- A task's options and packet as put (`OPTIONS\nPACKET`, both JSON): a
-- string of its own, so that the record's hash stays a compact listpack.
local function body_key(ref) return B .. 'body:' .. ref end
local function ready_key(method) return B .. 'ready:' .. method end
local function due_key(method) return B .. 'due:' .. method end
local function dedupe_key(key) return B .. 'key:' .. key end
local function result_key(key) return B .. 'result:' .. key end
local function next_seq() return redis.call('INCR', SEQ) end

-- The tasks of each state now, whole queue and per method (`state` and
-- `state:method` in COUNTS); a field that comes to zero is removed.
local function gauge(method, state, delta)
  if not state or not LIVE[state] then return end
  for _, field in ipairs({state, state .. ':' .. method}) do
    if redis.call('HINCRBY', COUNTS, field, delta) <= 0 then
      redis.call('HDEL', COUNTS, field)
    end
  end
end
local function gauge_of(field) return tonumber(redis.call('HGET', COUNTS, field)) or 0 end
-- Counters since the queue was created (`name` and `name:method` in STATS).
local function bump(method, name)
  redis.call('HINCRBY', STATS, name, 1)
  if method then redis.call('HINCRBY', STATS, name .. ':' .. method, 1) end
end

-- Events, on the one channel every server subscribes to.
local function ev_ready(method) redis.call('PUBLISH', EVENTS, 'r\n' .. method) end
local function ev_finished(ref, state) redis.call('PUBLISH', EVENTS, 'f\n' .. state .. '\n' .. ref) end
local function ev_cancel(ref) redis.call('PUBLISH', EVENTS, 'c\n' .. ref) end

-- Takes a task out of the set of its state.
local function unplace(ref, method, state)
  if state == 'scheduled' then
    redis.call('ZREM', SCHED, ref)
    redis.call('ZREM', due_key(method), ref)
  elseif state == 'queued' then
    redis.call('ZREM', ready_key(method), ref)
    if redis.call('EXISTS', ready_key(method)) == 0 then redis.call('SREM', METHODS, method) end
  elseif state == 'leased' then
    redis.call('ZREM', LEASES, ref)
  elseif state == 'dead' then
    redis.call('ZREM', DEADS, ref)
  end
end

-- Makes a task ready to be leased, in its band, at sequence `seq`.
local function enqueue(ref, method, band, seq)
  redis.call('ZADD', ready_key(method), band * BAND + seq, ref)
  redis.call('SADD', METHODS, method)
end

-- Makes a task wait until `at` (ms).
local function schedule(ref, method, at)
  redis.call('ZADD', SCHED, at, ref)
  redis.call('ZADD', due_key(method), at, ref)
end

-- Releases a task's dedupe key if it still names this task.
local function release(ref, task)
  local key = redis.call('HGET', task, 'k')
  if key and redis.call('GET', dedupe_key(key)) == ref then
    redis.call('DEL', dedupe_key(key))
  end
end

-- Ends a task as done or cancelled: kept for the retention window, then
-- gone; its name is free at once.
local function finish(ref, method, old, state, now, retention)
  unplace(ref, method, old)
  gauge(method, old, -1)
  local task = task_key(ref)
  redis.call('HSET', task, 's', state, 'f', now)
  redis.call('HDEL', task, 'run')
  redis.call('PEXPIRE', task, retention)
  redis.call('PEXPIRE', body_key(ref), retention)
  redis.call('ZADD', FIN, (now + retention) * FIN_SCALE + next_seq() % FIN_SCALE, ref)
  if state == 'cancelled' then
    release(ref, task)
    bump(method, 'cancelled')
  end
  ev_finished(ref, state)
end

-- Makes a task a dead letter: kept (and its name and dedupe key held)
-- until it is requeued or purged.
local function die(ref, method, old, now)
  unplace(ref, method, old)
  gauge(method, old, -1)
  gauge(method, 'dead', 1)
  redis.call('HSET', task_key(ref), 's', 'dead', 'f', now)
  redis.call('HDEL', task_key(ref), 'run')
  redis.call('ZADD', DEADS, next_seq(), ref)
  ev_finished(ref, 'dead')
end

-- A method whose concurrency is limited: a task that ends frees a slot,
-- so its ready tasks are announced again.
local function slot_freed(method)
  local limit = redis.call('HGET', LIMITS, method)
  if limit and string.sub(limit, 1, 1) ~= '|' and redis.call('EXISTS', ready_key(method)) == 1 then
    ev_ready(method)
  end
end

-- The scheduled tasks that are due become queued (at most this many per
-- call; the next call goes on), in the order of their times; and the
-- finished tasks whose records expired leave the list of them.
local PROMOTE_MAX = 1000
local function promote(now)
  redis.call('ZREMRANGEBYSCORE', FIN, '-inf', string.format('(%.0f', now * FIN_SCALE))
  local due = redis.call('ZRANGEBYSCORE', SCHED, '-inf', now, 'LIMIT', 0, PROMOTE_MAX)
  for _, ref in ipairs(due) do
    local task = task_key(ref)
    local fields = redis.call('HMGET', task, 'm', 'p', 's')
    local method = fields[1]
    redis.call('ZREM', SCHED, ref)
    if method and fields[3] == 'scheduled' then
      redis.call('ZREM', due_key(method), ref)
      local seq = next_seq()
      redis.call('HSET', task, 's', 'queued', 'seq', seq)
      redis.call('HDEL', task, 'run')
      gauge(method, 'scheduled', -1)
      gauge(method, 'queued', 1)
      enqueue(ref, method, tonumber(fields[2]) or 1, seq)
    end
  end
end

-- Ends an attempt without its outcome (its lease ran out, or its worker
-- gave it back): cancelled, when that was asked; a dead letter, when it
-- has no attempts left; else queued again at the back of its priority
-- (its last holder, still named, may ack it until it is handed out again).
local function give_back(ref, method, old, now)
  local task = task_key(ref)
  local f = redis.call('HMGET', task, 'c', 'a', 'x', 'p', 'rt')
  if f[1] == '1' then
    finish(ref, method, old, 'cancelled', now, tonumber(f[5]) or 3600000)
  elseif (tonumber(f[2]) or 0) >= (tonumber(f[3]) or 1) then
    die(ref, method, old, now)
  else
    unplace(ref, method, old)
    gauge(method, old, -1)
    gauge(method, 'queued', 1)
    local seq = next_seq()
    redis.call('HSET', task, 's', 'queued', 'seq', seq)
    enqueue(ref, method, tonumber(f[4]) or 1, seq)
    ev_ready(method)
  end
end

-- The leases that ended are given back (at most this many per call; the
-- next call goes on).
local RECLAIM_MAX = 100
local function reclaim(now)
  local ended = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, RECLAIM_MAX)
  for _, ref in ipairs(ended) do
    local f = redis.call('HMGET', task_key(ref), 'm', 's')
    if not f[1] or f[2] ~= 'leased' then
      redis.call('ZREM', LEASES, ref)
    else
      give_back(ref, f[1], 'leased', now)
      slot_freed(f[1])
    end
  end
end

-- Brings the queue up to now: ended leases, due tasks, expired records.
local function catch_up(now)
  reclaim(now)
  promote(now)
end

-- A task's record, whole, for show and list (false when there is none).
local function info(ref)
  local fields = redis.call('HGETALL', task_key(ref))
  if #fields == 0 then return false end
  local body = redis.call('GET', body_key(ref))
  if body then
    fields[#fields + 1] = 'body'
    fields[#fields + 1] = body
  end
  return fields
end
"#;
