//! The scripts that put and hand out tasks.

/// The answers of the [`PUT`] script (the same numbers as its Lua locals
/// of the same names; a unit test holds them together).
pub(in crate::redis_queue) mod put_answer {
    pub(crate) const QUEUED: i64 = 1;
    pub(crate) const DUPLICATE: i64 = 0;
    pub(crate) const NAME_TAKEN: i64 = 2;
    pub(crate) const FULL: i64 = 3;
    pub(crate) const SCHEDULED: i64 = 4;
}

/// Puts a task (also used by the schedules, through [`PUT_FN`]).
pub(super) const PUT_FN: &str = r#"
local QUEUED, DUPLICATE, NAME_TAKEN, FULL, SCHEDULED = 1, 0, 2, 3, 4
-- ARGV from `first`: body (options and packet), ref, dedupe key, method,
-- band, max attempts, run at ms ('' for none), backoff initial ms,
-- backoff max ms, max tasks, retention ms.
local function put(now, first)
  local a = function(i) return ARGV[first + i - 1] end
  local ref, key, method = a(2), a(3), a(4)
  local held = redis.call('GET', dedupe_key(key))
  if held then
    redis.call('HINCRBY', STATS, 'duplicates', 1)
    return {DUPLICATE, held}
  end
  local task = task_key(ref)
  if LIVE[redis.call('HGET', task, 's') or ''] then
    redis.call('HINCRBY', STATS, 'names_taken', 1)
    return {NAME_TAKEN}
  end
  local total = gauge_of('queued') + gauge_of('scheduled') + gauge_of('leased') + gauge_of('dead')
  if total >= tonumber(a(10)) then
    redis.call('HINCRBY', STATS, 'full', 1)
    return {FULL}
  end
  -- A finished task of the same name (kept for its retention) is replaced.
  redis.call('DEL', task)
  local run = tonumber(a(7))
  local band = tonumber(a(5))
  redis.call('SET', body_key(ref), a(1))
  redis.call('HSET', task, 'm', method, 'k', key, 'p', band, 'a', 0, 'x', a(6), 'put', now,
    'bi', a(8), 'bm', a(9), 'rt', a(11))
  redis.call('SET', dedupe_key(key), ref)
  if run and run > now then
    redis.call('HSET', task, 's', 'scheduled', 'run', run, 'due', run)
    gauge(method, 'scheduled', 1)
    schedule(ref, method, run)
    return {SCHEDULED}
  end
  local seq = next_seq()
  redis.call('HSET', task, 's', 'queued', 'due', now, 'seq', seq)
  gauge(method, 'queued', 1)
  enqueue(ref, method, band, seq)
  ev_ready(method)
  return {QUEUED}
end
"#;

/// `KEYS`: base. `ARGV`: the arguments of `put`.
pub(super) const PUT: &str = r#"
local now = now_ms()
catch_up(now)
return put(now, 1)
"#;

/// Rate and concurrency limits: whether a method may go now, and when
/// it may if not; taking a token when it goes.
pub(super) const LIMITS_FN: &str = r#"
-- A limit is 'concurrency|count|per ms', each part empty for none.
local function limit_of(method)
  local limit = redis.call('HGET', LIMITS, method)
  if not limit then return nil end
  local concurrency, count, per = string.match(limit, '^(%d*)|(%d*)|(%d*)$')
  return {concurrency = tonumber(concurrency), count = tonumber(count), per = tonumber(per)}
end
-- The tokens of a method's bucket now (full when never used).
local function tokens(method, limit, now)
  local fields = redis.call('HMGET', BUCKETS, method .. ':t', method .. ':at')
  local left, at = tonumber(fields[1]), tonumber(fields[2])
  if not left or not at then return limit.count end
  return math.min(limit.count, left + math.max(0, now - at) * limit.count / limit.per)
end
-- true, or false and when it may go (nil: when a running task ends).
local function allowed(method, limit, now)
  if not limit then return true end
  if limit.concurrency and gauge_of('leased:' .. method) >= limit.concurrency then
    return false, nil
  end
  if limit.count and limit.per then
    local left = tokens(method, limit, now)
    if left < 1 then
      return false, now + math.ceil((1 - left) * limit.per / limit.count)
    end
  end
  return true
end
local function take(method, limit, now)
  if limit and limit.count and limit.per then
    local left = tokens(method, limit, now) - 1
    redis.call('HSET', BUCKETS, method .. ':t', string.format('%.6f', left), method .. ':at', now)
  end
end
"#;

/// `KEYS`: base. `ARGV`: worker, lease ms, retention ms, then the methods
/// it takes (none: any).
///
/// Answers `{1, ref, body, attempt, due ms, put ms}`, or
/// `{0, next due ms or -1}`.
pub(super) const LEASE: &str = r#"
local worker, lease, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
catch_up(now)
local any = #ARGV < 4
local methods
if any then methods = redis.call('SMEMBERS', METHODS) else methods = {unpack(ARGV, 4)} end
-- The best ready task among the methods that may go; the methods held
-- back are counted once.
local held_back = {}
local wait
local function best_ready()
  local best, best_method, best_score, best_limit
  for _, method in ipairs(methods) do
    local head = redis.call('ZRANGE', ready_key(method), 0, 0, 'WITHSCORES')
    if #head == 0 then
      if any then redis.call('SREM', METHODS, method) end
    else
      local limit = limit_of(method)
      local ok, at = allowed(method, limit, now)
      if ok then
        local score = tonumber(head[2])
        if not best or score < best_score then
          best, best_method, best_score, best_limit = head[1], method, score, limit
        end
      else
        if not held_back[method] then
          held_back[method] = true
          bump(method, 'limited')
        end
        if at and (not wait or at < wait) then wait = at end
      end
    end
  end
  return best, best_method, best_limit
end
-- A task handed out as often as allowed is a dead letter, not handed out
-- again; at most this many are met per call.
local LEASE_TRIES = 100
for _ = 1, LEASE_TRIES do
  local best, method, limit = best_ready()
  if not best then break end
  local task = task_key(best)
  local f = redis.call('HMGET', task, 'a', 'x', 's')
  if f[3] ~= 'queued' then
    -- A name without a queued record behind it (written by hand): dropped.
    unplace(best, method, 'queued')
  elseif (tonumber(f[1]) or 0) >= (tonumber(f[2]) or 1) then
    die(best, method, 'queued', now)
  else
    take(method, limit, now)
    unplace(best, method, 'queued')
    gauge(method, 'queued', -1)
    gauge(method, 'leased', 1)
    local attempt = redis.call('HINCRBY', task, 'a', 1)
    if attempt > 1 then redis.call('HINCRBY', STATS, 'redeliveries', 1) end
    redis.call('HSET', task, 's', 'leased', 'w', worker)
    redis.call('ZADD', LEASES, now + lease, best)
    local d = redis.call('HMGET', task, 'due', 'put')
    local body = redis.call('GET', body_key(best)) or ''
    return {1, best, body, attempt, tonumber(d[1]) or now, tonumber(d[2]) or now}
  end
end
-- Nothing to hand out: when something may be.
local soonest
if any then
  soonest = redis.call('ZRANGE', SCHED, 0, 0, 'WITHSCORES')[2]
  soonest = soonest and tonumber(soonest)
else
  for _, method in ipairs(methods) do
    local at = redis.call('ZRANGE', due_key(method), 0, 0, 'WITHSCORES')[2]
    at = at and tonumber(at)
    if at and (not soonest or at < soonest) then soonest = at end
  end
end
if wait and (not soonest or wait < soonest) then soonest = wait end
return {0, soonest or -1}
"#;

/// `KEYS`: base. `ARGV`: ref, worker.
/// A task leased to `worker` whose stored record cannot be read: a dead
/// letter at once. Answers 1, or 0 when the worker does not hold it.
pub(super) const BURY: &str = r#"
local ref, worker = ARGV[1], ARGV[2]
local task = task_key(ref)
local f = redis.call('HMGET', task, 's', 'w', 'm')
if f[1] ~= 'leased' or f[2] ~= worker then return 0 end
die(ref, f[3] or '', 'leased', now_ms())
return 1
"#;
