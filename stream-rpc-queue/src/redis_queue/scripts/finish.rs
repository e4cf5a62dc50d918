//! The scripts a worker's outcome runs: extend, ack, nack, fail; and
//! cancel.

/// The task `ref` if `worker` holds it (leased to it, or queued again
/// after its lease ran out and handed to nobody else yet): its method,
/// whether its cancellation was asked, and its state; nil otherwise.
pub(super) const HELD_FN: &str = r#"
local function held(ref, worker)
  local f = redis.call('HMGET', task_key(ref), 's', 'w', 'm', 'c')
  if (f[1] ~= 'leased' and f[1] ~= 'queued') or f[2] ~= worker or not f[3] then return nil end
  return f[3], f[4] == '1', f[1]
end
"#;

/// `KEYS`: base. `ARGV`: ref, worker, lease ms. Answers 1, or 0 (stale).
pub(super) const EXTEND: &str = r#"
local ref = ARGV[1]
local now = now_ms()
catch_up(now)
local method, _, state = held(ref, ARGV[2])
if not method then return 0 end
if state == 'queued' then
  -- A lease that ran out, its task handed to nobody else yet: taken up
  -- again.
  unplace(ref, method, 'queued')
  gauge(method, 'queued', -1)
  gauge(method, 'leased', 1)
  redis.call('HSET', task_key(ref), 's', 'leased')
end
redis.call('ZADD', LEASES, now + tonumber(ARGV[3]), ref)
return 1
"#;

/// `KEYS`: base. `ARGV`: ref, worker, result, retention ms. Answers 1
/// (done, or cancelled when that was asked), or 0 (stale).
pub(super) const ACK: &str = r#"
local ref, result, retention = ARGV[1], ARGV[3], tonumber(ARGV[4])
local method, cancel, state = held(ref, ARGV[2])
if not method then return 0 end
local task = task_key(ref)
local now = now_ms()
redis.call('HSET', task, 'r', result)
if cancel then
  finish(ref, method, state, 'cancelled', now, retention)
else
  local key = redis.call('HGET', task, 'k') or ''
  -- The dedupe key and the result stay for the retention window.
  redis.call('SET', result_key(key), result, 'PX', retention)
  redis.call('SET', dedupe_key(key), ref, 'PX', retention)
  bump(method, 'done')
  finish(ref, method, state, 'done', now, retention)
end
slot_freed(method)
return 1
"#;

/// `KEYS`: base. `ARGV`: ref, worker. Answers 1, or 0 (stale). The
/// attempt counts: a task with none left is a dead letter; one whose
/// cancellation was asked is cancelled.
pub(super) const NACK: &str = r#"
local ref = ARGV[1]
local now = now_ms()
catch_up(now)
local method, _, state = held(ref, ARGV[2])
if not method then return 0 end
-- Nobody holds it now: an ack from the last holder is stale.
redis.call('HDEL', task_key(ref), 'w')
give_back(ref, method, state, now)
if state == 'leased' then slot_freed(method) end
return 1
"#;

/// The answers of the [`FAIL`] script's first element.
pub(in crate::redis_queue) mod fail_answer {
    pub(crate) const STALE: i64 = 0;
    pub(crate) const RETRYING: i64 = 1;
    pub(crate) const DEAD: i64 = 2;
    pub(crate) const CANCELLED: i64 = 3;
}

/// `KEYS`: base. `ARGV`: ref, worker, error, retry (1 or 0), retention ms.
/// Answers `{STALE}`, `{RETRYING, at ms}`, `{DEAD}` or `{CANCELLED}`.
pub(super) const FAIL: &str = r#"
local STALE, RETRYING, DEAD, CANCELLED = 0, 1, 2, 3
local ref, retry, retention = ARGV[1], ARGV[4] == '1', tonumber(ARGV[5])
local method, cancel, state = held(ref, ARGV[2])
if not method then return {STALE} end
local task = task_key(ref)
local now = now_ms()
redis.call('HSET', task, 'e', ARGV[3])
local answer
if cancel then
  -- Cancelled, as it was asked: not counted a failure.
  finish(ref, method, state, 'cancelled', now, retention)
  answer = {CANCELLED}
else
  bump(method, 'failed')
  local f = redis.call('HMGET', task, 'a', 'x', 'bi', 'bm')
  local attempts, most = tonumber(f[1]) or 1, tonumber(f[2]) or 1
  if retry and attempts < most then
    -- The backoff: initial x 2^(attempts - 1), at most max.
    local initial, max = tonumber(f[3]) or 1000, tonumber(f[4]) or 300000
    local wait = math.min(max, initial * 2 ^ math.min(math.max(attempts - 1, 0), 31))
    local at = now + wait
    unplace(ref, method, state)
    gauge(method, state, -1)
    gauge(method, 'scheduled', 1)
    redis.call('HSET', task, 's', 'scheduled', 'run', at, 'due', at)
    redis.call('HDEL', task, 'w')
    schedule(ref, method, at)
    bump(method, 'retried')
    answer = {RETRYING, at}
  else
    die(ref, method, state, now)
    answer = {DEAD}
  end
end
slot_freed(method)
return answer
"#;

/// The answers of the [`CANCEL`] script's first element.
pub(in crate::redis_queue) mod cancel_answer {
    pub(crate) const UNKNOWN: i64 = 0;
    pub(crate) const CANCELLED: i64 = 1;
    pub(crate) const REQUESTED: i64 = 2;
    pub(crate) const FINISHED: i64 = 3;
}

/// `KEYS`: base. `ARGV`: ref, retention ms. Answers `{UNKNOWN}`,
/// `{CANCELLED}`, `{REQUESTED, worker}` or `{FINISHED, state}`.
pub(super) const CANCEL: &str = r#"
local UNKNOWN, CANCELLED, REQUESTED, FINISHED = 0, 1, 2, 3
local ref, retention = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
catch_up(now)
local task = task_key(ref)
local f = redis.call('HMGET', task, 's', 'm', 'w')
local state, method = f[1], f[2]
if not state or not method then return {UNKNOWN} end
if state == 'scheduled' or state == 'queued' then
  finish(ref, method, state, 'cancelled', now, retention)
  return {CANCELLED}
end
if state == 'leased' then
  -- Announced again when asked again, for a server that missed it.
  redis.call('HSET', task, 'c', 1)
  ev_cancel(ref)
  return {REQUESTED, f[3] or ''}
end
return {FINISHED, state}
"#;
