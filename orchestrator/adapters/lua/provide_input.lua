#!lua flags=allow-oom
-- Store an answer to a request for input of a task waiting for it (`input_required`); once nothing it asked for
-- is pending, the task is queued again (its place kept) to resume from its checkpoint. The caller checked the
-- answer against the request's schema. The same answer delivered again changes nothing.
-- Returns {outcome, status after, pending keys}: outcome 'stored', 'duplicate' or 'not_expected'; false if there
-- is no such task.
-- USES: common, due
-- KEYS: active
-- ARGV: task_id, key, answer
local rec = load(task_id)
if not rec then return false end
local pending = rec.iq or {}
if rec.s ~= 'input_required' or not pending[key] then
  local outcome = (rec.ia and rec.ia[key] == answer) and 'duplicate' or 'not_expected'
  local keys = {}
  for k in pairs(pending) do keys[#keys + 1] = k end
  table.sort(keys)
  return {outcome, rec.s, keys}
end
pending[key] = nil
rec.ia = rec.ia or {}
rec.ia[key] = answer
emit(rec, 'input_received', cjson.encode({key = key}))
local left = {}
for k in pairs(pending) do left[#left + 1] = k end
table.sort(left)
if #left == 0 then
  rec.iq = nil
  rec.s = 'queued'
  unschedule(rec)
  enqueue(rec, false)
  emit(rec, 'queued', '{"resumed":true}')
end
save(rec)
announce()
return {'stored', rec.s, left}
