#!lua flags=allow-oom
-- Take up to `count` queued tasks of a worker type for a worker and start them: each gets its next attempt
-- (the fencing token), a delivery entry pending under the worker's consumer name, and a `running` event.
-- Tasks that must not run are settled on the way: a cancel requested while no worker held them, or attempts
-- lost to crashes used up (a dead letter). A retried call (its reply lost) takes nothing: the worker reads
-- what it holds from its pending entries.
-- Returns {taken, settled, duplicate}: taken = {entry id, record, parent's result or ''} per task; settled =
-- records of tasks finished here (for analytics).
-- USES: common, levels, due
-- KEYS: active
-- ARGV: worker_type, count, worker, take_seq, max_attempts, max_preemptions, fixed_tools, restarting_tools, aging_ms, cap, dead_letter_code, parent_failed_code, urgent_priority
local takes = tag .. ':takes'
if redis.call('HGET', takes, worker) == take_seq then return {{}, {}, 1} end
-- The delivery stream and its group come first: XREADGROUP failing after the pops would strand the tasks
-- (a script that errs keeps its writes). A stream never disappears once made, unless the data was lost.
if redis.call('EXISTS', tag .. ':tasks') == 0 then
  redis.call('XGROUP', 'CREATE', tag .. ':tasks', 'workers', '0', 'MKSTREAM')
end
redis.call('HSET', takes, worker, take_seq)
promote_due(worker_type, 100, tonumber(urgent_priority))  -- delayed tasks come due compete in this very take
aging_ms, count = tonumber(aging_ms), tonumber(count)
local fixed = cjson.decode(fixed_tools)  -- tools that may not be preempted
local restarting = cjson.decode(restarting_tools)  -- tools that cannot resume from a checkpoint
local taken, settled, entries = {}, {}, {}

local function start(rec)
  local attempt = (rec.at or 0) + 1
  -- `now` was read before this script ran: a delayed task promoted meanwhile (at its due time) starts no earlier
  local started = math.max(now, rec.nb or 0)
  rec.at, rec.s, rec.wk, rec.st, rec.pv = attempt, 'running', worker, started, nil
  rec.fs = rec.fs or started
  local resumed = 'null'
  if rec.cp and restarting[rec.t] then  -- it cannot resume: the next attempt starts from zero
    rec.rs = (rec.rs or 0) + 1
    rec.cp, rec.rf = nil, nil
  elseif rec.cp then
    rec.rf = rec.cp
    resumed = rec.cp
  end
  rec.ei = redis.call('XADD', tag .. ':tasks', '*', 'i', rec.i, 'at', attempt)
  entries[#entries + 1] = rec.ei
  local victim_rank = nil
  if not fixed[rec.t] and (rec.pe or 0) < tonumber(max_preemptions) then
    -- best victim first: lowest priority, then the latest started (the least work lost)
    victim_rank = string.format('%.0f', rec.p * 1e13 + (1e13 - now))
  end
  mark_running(rec, victim_rank)
  emit(rec, 'running', '{"attempt":' .. attempt .. ',"worker":' .. cjson.encode(worker) .. ',"resumed_from":' ..
    resumed .. '}')
  save(rec)
  local parent_result = rec.pr or ''  -- delivered with the child by the outbox when the parent is elsewhere
  if rec.pa and parent_result == '' then
    local parent = load(rec.pa)
    parent_result = parent and parent.r or ''
  end
  taken[#taken + 1] = {rec.ei, cjson.encode(rec), parent_result}
end

local function dead_letter(rec, used)
  local message = 'gave up after ' .. used .. ' attempts: ' .. (rec.lf or 'attempts exhausted')
  rec.dd = redis.call('XADD', tag .. ':dead', '*', 'task_id', rec.i, 'reason', message, 'attempts', used, 'time', now)
  rec.e = cjson.encode({code = tonumber(dead_letter_code), message = message, retryable = true})
  finalize(rec, 'failed', '{}', parent_failed_code)
  settled[#settled + 1] = cjson.encode(rec)
end

while #taken < count do
  local p = best_level(worker_type, aging_ms, tonumber(cap))
  if not p then break end
  local popped = redis.call('ZPOPMIN', level_key(worker_type, p))
  local id, score = popped[1], tonumber(popped[2])
  local lane = worker_type .. ':' .. p
  local clock = math.floor(score / SCALE)
  if clock > tonumber(redis.call('HGET', CLOCKS, lane) or '0') then
    redis.call('HSET', CLOCKS, lane, clock)
    -- tenants whose next start is behind the clock are as good as new: forget them (bounded by active tenants)
    redis.call('ZREMRANGEBYSCORE', tag .. ':f:' .. lane, '-inf', clock)
  end
  local rec = load(id)
  if rec and (rec.s == 'queued' or rec.s == 'preempted') then
    local used = (rec.at or 0) - (rec.pe or 0) - (rec.ab or 0) - (rec.ir or 0)
    if rec.cr then
      finalize(rec, 'cancelled', '{}', parent_failed_code)
      settled[#settled + 1] = cjson.encode(rec)
    elseif used >= tonumber(max_attempts) then
      dead_letter(rec, used)
    else
      start(rec)
    end
  end
end
if #entries > 0 then
  redis.call('XREADGROUP', 'GROUP', 'workers', worker, 'COUNT', #entries, 'STREAMS', tag .. ':tasks', '>')
end
announce()
return {taken, settled, 0}
