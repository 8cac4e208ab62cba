#!lua flags=allow-oom
-- Attempts that were lost (their worker died, restarted, or went silent): each task goes back to its place in
-- the queue, noting why (named in its dead letter if attempts run out), and the delivery entry is
-- acknowledged. Fenced twice: by the attempt (a task that moved on is left alone) and, when a router calls,
-- by its lease on the shard (a router that lost it changes nothing).
-- items: {{task id, attempt, entry id, reason}, …}
-- Returns the number of tasks requeued, or -1 when the lease is not the caller's.
-- USES: common
-- KEYS: active, lease
-- ARGV: items, holder
if holder ~= '' and redis.call('GET', KEYS[2]) ~= holder then return -1 end
local requeued = 0
for _, item in ipairs(cjson.decode(items)) do
  local id, attempt, entry, reason = unpack(item)
  local rec = load(id)
  if rec and rec.s == 'running' and rec.at == attempt then
    rec.lf = reason
    rec.s = 'queued'
    release_entry(rec)
    unmark_running(rec)
    enqueue(rec, false)
    emit(rec, 'attempt_lost', cjson.encode({reason = reason}))
    save(rec)
    requeued = requeued + 1
  end
  redis.call('XACK', tag .. ':tasks', 'workers', entry)
  redis.call('XDEL', tag .. ':tasks', entry)
end
announce()
return requeued
