#!lua
-- Name a rerun in the record of the task it runs again (once: a retried rerun_task links again harmlessly).
-- 1 when linked (or already), 0 when the original is gone.
-- USES: common
-- KEYS: active
-- ARGV: task_id, rerun_id
local rec = load(task_id)
if not rec then return 0 end
local reruns = rec.rr or {}
for _, id in ipairs(reruns) do
  if id == rerun_id then return 1 end
end
reruns[#reruns + 1] = rerun_id
rec.rr = reruns
save(rec)
return 1
