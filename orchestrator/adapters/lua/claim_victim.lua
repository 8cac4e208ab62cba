#!lua flags=allow-oom
-- Claim a running task as the victim of a preemption, so no other urgent task picks it too. Returns its
-- worker and the attempt claimed, or false if it is not running or already claimed.
-- USES: common
-- KEYS: active
-- ARGV: task_id
local rec = load(task_id)
if not rec then return false end
redis.call('ZREM', run_key(rec.w), task_id)
if rec.s ~= 'running' or rec.pv then return false end
rec.pv = 1
save(rec)
return {rec.wk, rec.at}
