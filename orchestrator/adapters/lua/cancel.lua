#!lua flags=allow-oom
-- Cancel a task: one not running (queued, preempted, waiting, input_required) is cancelled at once, its waiting children too;
-- a running one is flagged, for its worker to interrupt (or for the next take, if its worker is gone).
-- Returns the status after, or false if there is no such task.
-- USES: common, due
-- KEYS: active
-- ARGV: task_id, stats, parent_failed_code
local rec = load(task_id)
if not rec then return false end
if rec.s == 'queued' or rec.s == 'preempted' or rec.s == 'waiting' or rec.s == 'scheduled' or
   rec.s == 'input_required' then
  redis.call('ZREM', level_key(rec.w, rec.p), rec.i)
  unschedule(rec)  -- a delayed task, cancelled before it was due, leaves its due set in this same step
  finalize(rec, 'cancelled', '{}', parent_failed_code)
  count_stats(stats)
  announce()
  return 'cancelled'
end
if rec.s == 'running' and not rec.cr then
  rec.cr = 1
  save(rec)
end
return rec.s
