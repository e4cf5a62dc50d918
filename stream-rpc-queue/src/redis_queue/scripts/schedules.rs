//! The scripts of periodic tasks. A schedule is a hash
//! (`{prefix}:schedule:<name>`: `def` its JSON, `next` its next tick in ms,
//! `origin` when it was set, `last` its last tick that put a task, `fired`)
//! and its next tick in the sorted set `{prefix}:ticks`. A tick is fired by
//! whoever moves `next` on from the value it read (compare and set), so by
//! exactly one server.

/// The key names of schedules.
pub(super) const SCHEDULE_FN: &str = r#"
local TICKS = B .. 'ticks'
local function schedule_key(name) return B .. 'schedule:' .. name end
local function schedule_record(name)
  local f = redis.call('HMGET', schedule_key(name), 'def', 'next', 'last', 'fired', 'origin')
  if not f[1] then return false end
  return {name, f[1], tonumber(f[2]) or 0, tonumber(f[3]) or -1, tonumber(f[4]) or 0,
    tonumber(f[5]) or 0}
end
"#;

/// `KEYS`: base. `ARGV`: name, JSON, next tick ms, origin ms, most
/// schedules. Answers 1, or 0 when there are that many schedules already.
pub(super) const PUT_SCHEDULE: &str = r#"
local name = ARGV[1]
if redis.call('EXISTS', schedule_key(name)) == 0 and redis.call('ZCARD', TICKS) >= tonumber(ARGV[5]) then
  return 0
end
redis.call('DEL', schedule_key(name))
redis.call('HSET', schedule_key(name), 'def', ARGV[2], 'next', ARGV[3], 'origin', ARGV[4], 'fired', 0)
redis.call('ZADD', TICKS, ARGV[3], name)
return 1
"#;

/// `KEYS`: base. `ARGV`: name. Answers 1 when it was there.
pub(super) const REMOVE_SCHEDULE: &str = r#"
redis.call('ZREM', TICKS, ARGV[1])
return redis.call('DEL', schedule_key(ARGV[1]))
"#;

/// `KEYS`: base. Answers `{name, JSON, next, last or -1, fired, origin}`
/// per schedule.
pub(super) const SCHEDULES: &str = r#"
local records = {}
for _, name in ipairs(redis.call('ZRANGE', TICKS, 0, -1)) do
  local record = schedule_record(name)
  if record then records[#records + 1] = record end
end
return records
"#;

/// `KEYS`: base. `ARGV`: most. Answers `{now, soonest next or -1,
/// {record...}}`: the schedules whose next tick is due.
pub(super) const DUE_SCHEDULES: &str = r#"
local now = now_ms()
local due = {}
for _, name in ipairs(redis.call('ZRANGEBYSCORE', TICKS, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
  local record = schedule_record(name)
  if record then due[#due + 1] = record else redis.call('ZREM', TICKS, name) end
end
local soonest = redis.call('ZRANGE', TICKS, 0, 0, 'WITHSCORES')[2]
return {now, soonest and tonumber(soonest) or -1, due}
"#;

/// `KEYS`: base. `ARGV`: name, the next tick read, the next tick after
/// it (empty: there is none, the schedule is removed once its tick is
/// put), the tick fired (ms), then the arguments of `put` for its task.
/// Answers `{-1}` when another caller fired it first (or it changed), else
/// the answer of `put`.
pub(super) const FIRE: &str = r#"
local name = ARGV[1]
local next = redis.call('ZSCORE', TICKS, name)
if not next or tonumber(next) ~= tonumber(ARGV[2]) then return {-1} end
local answer = put(now_ms(), 5)
if answer[1] == QUEUED or answer[1] == SCHEDULED then
  redis.call('HSET', schedule_key(name), 'last', ARGV[4])
  redis.call('HINCRBY', schedule_key(name), 'fired', 1)
end
if ARGV[3] == '' then
  redis.call('ZREM', TICKS, name)
  redis.call('DEL', schedule_key(name))
  return answer
end
redis.call('HSET', schedule_key(name), 'next', ARGV[3])
redis.call('ZADD', TICKS, ARGV[3], name)
return answer
"#;

/// `KEYS`: base. `ARGV`: name, the next tick read. Removes a schedule
/// that cannot be fired (its record unreadable) unless it changed since
/// it was read (compare and set). Answers 1 when it was removed.
pub(super) const DROP_SCHEDULE: &str = r#"
local next = redis.call('ZSCORE', TICKS, ARGV[1])
if not next or tonumber(next) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', TICKS, ARGV[1])
redis.call('DEL', schedule_key(ARGV[1]))
return 1
"#;
