//! The scripts that look at the queue or tidy it: show, list, stats,
//! dead letters, requeue, purge, limits.

/// `KEYS`: base. `ARGV`: ref. Answers the task's record (`HGETALL`), or
/// false.
pub(super) const SHOW: &str = r#"
catch_up(now_ms())
return info(ARGV[1])
"#;

/// `KEYS`: base. `ARGV`: state, limit. Answers the records of the tasks
/// in that state: scheduled by time, queued in the order they became
/// available, leased by when their lease ends, dead in the order they
/// died, done and cancelled newest first.
pub(super) const LIST: &str = r#"
local state, limit = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
catch_up(now)
local refs = {}
if state == 'scheduled' then
  refs = redis.call('ZRANGE', SCHED, 0, limit - 1)
elseif state == 'leased' then
  refs = redis.call('ZRANGE', LEASES, 0, limit - 1)
elseif state == 'dead' then
  refs = redis.call('ZRANGE', DEADS, 0, limit - 1)
elseif state == 'queued' then
  -- The first `limit` of each band of each method, merged by sequence.
  local found = {}
  for _, method in ipairs(redis.call('SMEMBERS', METHODS)) do
    for band = 0, 2 do
      local lo = band * BAND
      local batch = redis.call('ZRANGEBYSCORE', ready_key(method), string.format('%.0f', lo),
        string.format('(%.0f', lo + BAND), 'WITHSCORES', 'LIMIT', 0, limit)
      for i = 1, #batch, 2 do
        found[#found + 1] = {tonumber(batch[i + 1]) - lo, batch[i]}
      end
    end
  end
  table.sort(found, function(x, y) return x[1] < y[1] end)
  for i = 1, math.min(limit, #found) do refs[i] = found[i][2] end
else
  -- Done or cancelled, newest first, among those kept: a bounded look.
  local FINISHED_SCAN = 10000
  local seen = redis.call('ZREVRANGE', FIN, 0, FINISHED_SCAN - 1)
  for _, ref in ipairs(seen) do
    if #refs >= limit then break end
    if redis.call('HGET', task_key(ref), 's') == state then refs[#refs + 1] = ref end
  end
end
local records = {}
for _, ref in ipairs(refs) do
  local record = info(ref)
  if record then records[#records + 1] = record end
end
return records
"#;

/// `KEYS`: base. Answers the counts of `Stats` (queued, leased, done,
/// dead, duplicates, redeliveries, names taken, full) and then the
/// scheduled.
pub(super) const STATS_SCRIPT: &str = r#"
catch_up(now_ms())
local c = redis.call('HMGET', STATS, 'done', 'duplicates', 'redeliveries', 'names_taken', 'full')
return {gauge_of('queued'), gauge_of('leased'), tonumber(c[1]) or 0, gauge_of('dead'),
  tonumber(c[2]) or 0, tonumber(c[3]) or 0, tonumber(c[4]) or 0, tonumber(c[5]) or 0,
  gauge_of('scheduled')}
"#;

/// `KEYS`: base. Answers the gauges and the counters, each as `HGETALL`
/// (`state:method` and `counter:method` fields).
pub(super) const METHOD_STATS: &str = r#"
catch_up(now_ms())
return {redis.call('HGETALL', COUNTS), redis.call('HGETALL', STATS)}
"#;

/// `KEYS`: base. Answers `{ref, task, attempts}` per dead letter, oldest
/// first.
pub(super) const DEAD_LETTERS: &str = r#"
local letters = {}
for _, ref in ipairs(redis.call('ZRANGE', DEADS, 0, -1)) do
  local attempts = redis.call('HGET', task_key(ref), 'a')
  letters[#letters + 1] = {ref, redis.call('GET', body_key(ref)) or '', tonumber(attempts) or 0}
end
return letters
"#;

/// `KEYS`: base. `ARGV`: ref. Answers 1, or 0 when no dead letter has
/// that name.
pub(super) const REQUEUE: &str = r#"
local ref = ARGV[1]
local task = task_key(ref)
local f = redis.call('HMGET', task, 's', 'm', 'p', 'k')
if f[1] ~= 'dead' or not f[2] then return 0 end
local method = f[2]
unplace(ref, method, 'dead')
gauge(method, 'dead', -1)
gauge(method, 'queued', 1)
local seq = next_seq()
redis.call('HSET', task, 's', 'queued', 'a', 0, 'seq', seq, 'due', now_ms())
redis.call('HDEL', task, 'f', 'w', 'c')
if f[4] then redis.call('SET', dedupe_key(f[4]), ref) end
enqueue(ref, method, tonumber(f[3]) or 1, seq)
ev_ready(method)
return 1
"#;

/// `KEYS`: base. Answers how many dead letters were forgotten.
pub(super) const PURGE_DEAD: &str = r#"
local refs = redis.call('ZRANGE', DEADS, 0, -1)
for _, ref in ipairs(refs) do
  local task = task_key(ref)
  local method = redis.call('HGET', task, 'm')
  if method then gauge(method, 'dead', -1) end
  release(ref, task)
  redis.call('DEL', task, body_key(ref))
end
redis.call('DEL', DEADS)
return #refs
"#;

/// `KEYS`: base. `ARGV`: method, limit (`concurrency|count|per ms`, or
/// '' to remove it), most limits. Answers 1, or 0 when there are that
/// many limits already. The method's bucket starts full again.
pub(super) const SET_LIMIT: &str = r#"
local method, limit, most = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('HDEL', BUCKETS, method .. ':t', method .. ':at')
if limit == '' then
  redis.call('HDEL', LIMITS, method)
  return 1
end
if redis.call('HEXISTS', LIMITS, method) == 0 and redis.call('HLEN', LIMITS) >= most then
  return 0
end
redis.call('HSET', LIMITS, method, limit)
if redis.call('EXISTS', ready_key(method)) == 1 then ev_ready(method) end
return 1
"#;
