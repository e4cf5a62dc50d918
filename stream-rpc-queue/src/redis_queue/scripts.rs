//! The Lua scripts the Redis queue runs (each one atomic on Redis), and
//! the numbers they answer with.

use redis::Script;

/// Reads a field of a stream entry's flat field list; Redis's clock in ms.
const FIELD: &str = r#"
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
"#;

/// Moves a task's entry to the dead letters. Its name leaves the live
/// tasks only if it still names this very entry, and names the dead letter
/// unless it names another already. Missing fields (an entry written by
/// hand) are stored empty rather than failing the script.
const BURY_FN: &str = r#"
local function bury(tasks, refs, dead, deadrefs, leases, group, id, fields, attempts)
  local ref = field(fields, 'ref') or ''
  redis.call('XACK', tasks, group, id)
  redis.call('XDEL', tasks, id)
  redis.call('ZREM', leases, id)
  local letter = redis.call('XADD', dead, '*', 'task', field(fields, 'task') or '',
    'ref', ref, 'key', field(fields, 'key') or '', 'attempts', attempts)
  if redis.call('HGET', refs, ref) == id then
    redis.call('HDEL', refs, ref)
  end
  redis.call('HSETNX', deadrefs, ref, letter)
end
"#;

const BURY: &str = r#"
-- KEYS: tasks, refs, dead, deadrefs, leases. ARGV: group, worker, entry id.
-- A task leased to `worker` that cannot be decoded: a dead letter at once.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])[1]
if not entry then return 0 end
bury(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[3], entry[2], tonumber(pending[1][4]))
return 1
"#;

/// The entry of a task named `ref` if `worker` holds it (it is pending
/// for that consumer).
const HELD: &str = r#"
local function held(tasks, refs, group, ref, worker)
  local id = redis.call('HGET', refs, ref)
  if not id then return nil end
  local pending = redis.call('XPENDING', tasks, group, id, id, 1)
  if #pending == 0 or pending[1][2] ~= worker then return nil end
  return id
end
"#;

/// The answers of the [`PUT`] script (the same numbers as its Lua locals
/// of the same names; a unit test holds them together).
pub(super) mod put_answer {
    pub(crate) const QUEUED: i64 = 1;
    pub(crate) const DUPLICATE: i64 = 0;
    pub(crate) const NAME_TAKEN: i64 = 2;
    pub(crate) const FULL: i64 = 3;
}

/// What the scripts that answer yes or no (ack, nack, extend, requeue)
/// answer for yes; anything else is no.
pub(super) const YES: i64 = 1;

const PUT: &str = r#"
-- KEYS: tasks, refs, dedup key, stats, deadrefs, dead.
-- ARGV: group, task, ref, key, max tasks.
local QUEUED, DUPLICATE, NAME_TAKEN, FULL = 1, 0, 2, 3
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[4], 'duplicates', 1)
  return DUPLICATE
end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 or redis.call('HEXISTS', KEYS[5], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[4], 'names_taken', 1)
  return NAME_TAKEN
end
if redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[6]) >= tonumber(ARGV[5]) then
  redis.call('HINCRBY', KEYS[4], 'full', 1)
  return FULL
end
local id = redis.call('XADD', KEYS[1], '*', 'task', ARGV[2], 'ref', ARGV[3], 'key', ARGV[4])
redis.call('SET', KEYS[3], id)
redis.call('HSET', KEYS[2], ARGV[3], id)
return QUEUED
"#;

const LEASE: &str = r#"
-- KEYS: tasks, refs, dead, deadrefs, stats, leases.
-- ARGV: group, worker, lease ms, max attempts, consumer idle ms.
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local max = tonumber(ARGV[4])
local now = now_ms()
local ends = now + tonumber(ARGV[3])
-- Now and then, the consumers that hold nothing and have been idle long
-- are removed (a consumer is made again by its next read or claim).
-- At most once a minute (or once per idle time, if shorter).
local SWEEP_EVERY_MS = 60000
local idle = tonumber(ARGV[5])
local swept = tonumber(redis.call('HGET', KEYS[5], 'swept')) or 0
if now - swept >= math.min(idle, SWEEP_EVERY_MS) then
  redis.call('HSET', KEYS[5], 'swept', now)
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
  if ok then
    for _, consumer in ipairs(consumers) do
      local name, pending, quiet
      for i = 1, #consumer, 2 do
        if consumer[i] == 'name' then name = consumer[i + 1] end
        if consumer[i] == 'pending' then pending = consumer[i + 1] end
        if consumer[i] == 'idle' then quiet = consumer[i + 1] end
      end
      if name and name ~= ARGV[2] and pending == 0 and quiet and quiet >= idle then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
      end
    end
  end
end
-- A lease that ended first: those tasks are older than any new one. At
-- most this many ended leases are looked at (made dead letters) per call.
local MAX_ENDED_LEASES = 100
for _ = 1, MAX_ENDED_LEASES do
  local id = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 1)[1]
  if not id then break end
  local entry = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)[1]
  if not entry then
    -- No longer pending (acked meanwhile): not a lease any more.
    redis.call('ZREM', KEYS[6], id)
  else
    local fields = entry[2]
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local attempts = tonumber(pending[1][4])
    if attempts > max then
      -- Handed out as often as allowed: a dead letter, not again.
      bury(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], ARGV[1], id, fields, attempts - 1)
    else
      redis.call('ZADD', KEYS[6], ends, id)
      redis.call('HINCRBY', KEYS[5], 'redeliveries', 1)
      return {field(fields, 'task') or '', attempts, id}
    end
  end
end
local fresh = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
if fresh and fresh[1] and fresh[1][2][1] then
  local entry = fresh[1][2][1]
  redis.call('ZADD', KEYS[6], ends, entry[1])
  return {field(entry[2], 'task') or '', 1, entry[1]}
end
return false
"#;

const EXTEND: &str = r#"
-- KEYS: tasks, refs, leases. ARGV: group, worker, ref, lease ms.
local id = held(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ARGV[2])
if not id then return 0 end
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[4]), id)
return 1
"#;

const ACK: &str = r#"
-- KEYS: tasks, refs, stats, leases. ARGV: group, worker, ref, result, retention ms, key base.
local id = held(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ARGV[2])
if not id then return 0 end
local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
local key = field(entry[2], 'key') or ''
redis.call('XACK', KEYS[1], ARGV[1], id)
redis.call('XDEL', KEYS[1], id)
redis.call('ZREM', KEYS[4], id)
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('SET', ARGV[6] .. 'result:' .. key, ARGV[4], 'PX', ARGV[5])
redis.call('SET', ARGV[6] .. 'key:' .. key, id, 'PX', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'done', 1)
return 1
"#;

const NACK: &str = r#"
-- KEYS: tasks, refs, leases. ARGV: group, worker, ref, nobody.
local id = held(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ARGV[2])
if not id then return 0 end
-- Held by nobody, its lease ended: the next lease takes it.
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[4], 0, id, 'JUSTID')
redis.call('ZADD', KEYS[3], 0, id)
return 1
"#;

const REQUEUE: &str = r#"
-- KEYS: tasks, refs, dead, deadrefs. ARGV: ref, key base.
local dead = redis.call('HGET', KEYS[4], ARGV[1])
if not dead then return 0 end
-- A name never stands for two tasks (a put under a held name is refused).
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local entry = redis.call('XRANGE', KEYS[3], dead, dead)[1]
if not entry then
  redis.call('HDEL', KEYS[4], ARGV[1])
  return 0
end
redis.call('HDEL', KEYS[4], ARGV[1])
local fields = entry[2]
local key = field(fields, 'key')
local id = redis.call('XADD', KEYS[1], '*', 'task', field(fields, 'task'), 'ref', ARGV[1], 'key', key)
redis.call('HSET', KEYS[2], ARGV[1], id)
redis.call('XDEL', KEYS[3], dead)
redis.call('SET', ARGV[2] .. 'key:' .. key, id)
return 1
"#;

const PURGE_DEAD: &str = r#"
-- KEYS: dead, deadrefs. ARGV: key base.
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
for _, entry in ipairs(entries) do
  -- An entry without its key (written by hand) is dropped all the same.
  local key = field(entry[2], 'key')
  if key then redis.call('DEL', ARGV[1] .. 'key:' .. key) end
end
redis.call('DEL', KEYS[1], KEYS[2])
return #entries
"#;

const STATS: &str = r#"
-- KEYS: tasks, dead, stats. ARGV: group, nobody.
local length = redis.call('XLEN', KEYS[1])
local leased = 0
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if ok then
  for _, consumer in ipairs(consumers) do
    local name, pending
    for i = 1, #consumer, 2 do
      if consumer[i] == 'name' then name = consumer[i + 1] end
      if consumer[i] == 'pending' then pending = consumer[i + 1] end
    end
    if name ~= ARGV[2] then leased = leased + pending end
  end
end
local counts = redis.call('HMGET', KEYS[3], 'done', 'duplicates', 'redeliveries',
  'names_taken', 'full')
return {length - leased, leased, tonumber(counts[1]) or 0, redis.call('XLEN', KEYS[2]),
  tonumber(counts[2]) or 0, tonumber(counts[3]) or 0, tonumber(counts[4]) or 0,
  tonumber(counts[5]) or 0}
"#;

/// The scripts, compiled once (their SHA-1 computed); Redis keeps them by
/// that name and they are sent whole again after a restart.
pub(super) struct Scripts {
    pub(super) put: Script,
    pub(super) lease: Script,
    pub(super) bury: Script,
    pub(super) extend: Script,
    pub(super) ack: Script,
    pub(super) nack: Script,
    pub(super) requeue: Script,
    pub(super) purge_dead: Script,
    pub(super) stats: Script,
}

pub(super) fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let with = |parts: &[&str]| Script::new(&parts.concat());
        Scripts {
            put: with(&[PUT]),
            lease: with(&[FIELD, BURY_FN, LEASE]),
            bury: with(&[FIELD, BURY_FN, BURY]),
            extend: with(&[FIELD, HELD, EXTEND]),
            ack: with(&[FIELD, HELD, ACK]),
            nack: with(&[HELD, NACK]),
            requeue: with(&[FIELD, REQUEUE]),
            purge_dead: with(&[FIELD, PURGE_DEAD]),
            stats: with(&[STATS]),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_put_scripts_answers_are_the_ones_read() {
        let locals = format!(
            "local QUEUED, DUPLICATE, NAME_TAKEN, FULL = {}, {}, {}, {}\n",
            put_answer::QUEUED,
            put_answer::DUPLICATE,
            put_answer::NAME_TAKEN,
            put_answer::FULL
        );
        assert!(PUT.contains(&locals), "{PUT}");
    }
}
