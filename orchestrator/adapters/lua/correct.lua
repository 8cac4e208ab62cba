#!lua
-- Correct a task that has not started (inject; a scheduled one too): its priority (it moves to that level, as a new
-- arrival there) and/or its input (what its worker will run). Returns 'corrected', or the status that prevented it.
-- USES: common
-- KEYS: active
-- ARGV: task_id, priority, input, who
local rec = load(task_id)
if not rec then return 'missing' end
if rec.s ~= 'queued' and rec.s ~= 'preempted' and rec.s ~= 'scheduled' then return rec.s end
local changes = {'"who":' .. cjson.encode(who)}
if priority ~= '' then
  redis.call('ZREM', level_key(rec.w, rec.p), rec.i)
  rec.p = tonumber(priority)
  if rec.s ~= 'scheduled' then enqueue(rec, true) end  -- a delayed one is queued at its priority when due
  changes[#changes + 1] = '"priority":' .. priority
end
if input ~= '' then
  rec.inp = input
  changes[#changes + 1] = '"input":' .. input
end
emit(rec, 'corrected', '{' .. table.concat(changes, ',') .. '}')
save(rec)
announce()
return 'corrected'
