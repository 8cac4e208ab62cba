"""The Lua scripts behind every task state change: each change is one atomic step in Redis.

Every script takes KEYS = Keys.of_task(id): record, stream, active, finished-channel, events,
checkpoints, dead-letters, tenants' active counts (SUBMIT then the idempotency key and the tenants'
submit meters), then a (record, events) pair per fanout child; and ARGV starting with now, group,
retention_s. Each change also appends an event to the
task's event stream, so history can be replayed and followed. When a task ends, its waiting
children are queued (with its result) if it succeeded, and cancelled otherwise — in the same step.
"""

from __future__ import annotations

# Shared helpers, prepended to each script.
_COMMON = """
local now, group, retention = ARGV[1], ARGV[2], ARGV[3]
local function emit(kind, data)
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', 1000, '*', 'type', kind, 'time', now, 'data', data)
end
local child_keys = 9  -- after of_task's eight (SUBMIT, which never finalizes, has two more)
local function count_tenant(record, by)  -- a tenant's unfinished tasks, for its quota
  local tenant = redis.call('HGET', record, 'tenant')
  if tenant and redis.call('HINCRBY', KEYS[8], tenant, by) <= 0 then redis.call('HDEL', KEYS[8], tenant) end
end
local function release_children(status, result)
  local parent = redis.call('HGET', KEYS[1], 'task_id')
  for i = child_keys, #KEYS, 2 do
    local record, events = KEYS[i], KEYS[i + 1]
    if redis.call('HGET', record, 'status') == 'waiting' then
      local child = redis.call('HMGET', record, 'task_id', 'priority', 'worker_type', 'payload', 'agent', 'tenant')
      if status == 'succeeded' then
        local entry = redis.call('XADD', KEYS[2], '*', 'task_id', child[1], 'priority', child[2], 'type', child[3],
          'payload', child[4], 'time', now, 'agent', child[5] or '', 'tenant', child[6] or '',
          'parent_result', result)
        redis.call('HSET', record, 'status', 'queued', 'entry_id', entry)
        redis.call('XADD', events, 'MAXLEN', '~', 1000, '*', 'type', 'queued', 'time', now, 'data',
          cjson.encode({parent = parent}))
      else
        local err = cjson.encode({code = -32008, message = 'parent ' .. parent .. ' ended ' .. status, retryable = false})
        redis.call('HSET', record, 'status', 'cancelled', 'finished_at', now, 'error', err)
        redis.call('XADD', events, 'MAXLEN', '~', 1000, '*', 'type', 'cancelled', 'time', now, 'data',
          '{"error":' .. err .. '}')
        redis.call('EXPIRE', record, retention)
        redis.call('EXPIRE', events, retention)
        redis.call('DECR', KEYS[3])
        count_tenant(record, -1)
        redis.call('PUBLISH', KEYS[4], child[1])
      end
    end
  end
end
local function finalize(status, data, result)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', now)
  emit(status, data)
  release_children(status, result or 'null')
  for _, key in ipairs({KEYS[1], KEYS[5], KEYS[6]}) do redis.call('EXPIRE', key, retention) end
  local entry = redis.call('HGET', KEYS[1], 'entry_id')
  if entry then redis.call('XACK', KEYS[2], group, entry) end
  redis.call('DECR', KEYS[3])
  count_tenant(KEYS[1], -1)
  redis.call('PUBLISH', KEYS[4], redis.call('HGET', KEYS[1], 'task_id'))
end
local function num(field) return tonumber(redis.call('HGET', KEYS[1], field) or '0') end
"""

# A tenant's submit meter (GCRA on Redis's clock): `burst` submits back to back, then one every 1/rate s.
# Returns nil and counts the submit when admitted, else how many seconds until one would be.
METER = """
local function meter_submit(key, tenant, rate, burst)
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local interval = 1 / rate
  local tat = math.max(tonumber(redis.call('HGET', key, tenant) or '0'), clock)
  local early = tat - clock - (burst - 1) * interval
  if early > 0 then return early end
  redis.call('HSET', key, tenant, string.format('%.6f', tat + interval))
  return nil
end
"""

# Accept a task and its fanout children: idempotency check, backpressure, the tenant's quota, records,
# stream entry — all or nothing. A retried call (reply lost) finds the record and answers as the first did.
# KEYS: of_task + idempotency + tenants' submit meters + child pairs
# ARGV: now, group, retention, task_id, max_active, idem_ttl (0 = none), priority, type, payload, agent,
#       tenant ('' = none), the tenant's max active (0 = no quota), its submits per second (0 = no quota),
#       its burst, children's records (JSON list of flat field/value lists), then the task's record pairs.
# Returns {task_id, duplicate (1/0)}, or {false, refusal, figure}: queue_full (active tasks),
# max_active_tasks (the tenant's), submits_per_s (seconds to wait).
SUBMIT = _COMMON + METER + """
if tonumber(ARGV[6]) > 0 then
  local existing = redis.call('GET', KEYS[9])
  if existing then return {existing, 1} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {ARGV[4], 0} end
local children = cjson.decode(ARGV[15])
local tenant = ARGV[11]
local active = tonumber(redis.call('GET', KEYS[3]) or '0')
if active + 1 + #children > tonumber(ARGV[5]) then return {false, 'queue_full', active} end
if tenant ~= '' and tonumber(ARGV[12]) > 0 then
  local mine = tonumber(redis.call('HGET', KEYS[8], tenant) or '0')
  if mine + 1 + #children > tonumber(ARGV[12]) then return {false, 'max_active_tasks', mine} end
end
if tenant ~= '' and tonumber(ARGV[13]) > 0 then
  local wait = meter_submit(KEYS[10], tenant, tonumber(ARGV[13]), tonumber(ARGV[14]))
  if wait then return {false, 'submits_per_s', tostring(wait)} end
end
local record = {}
for i = 16, #ARGV do record[#record + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(record))
for i, fields in ipairs(children) do
  redis.call('HSET', KEYS[9 + 2 * i], unpack(fields))
  redis.call('XADD', KEYS[10 + 2 * i], 'MAXLEN', '~', 1000, '*', 'type', 'waiting', 'time', now, 'data',
    cjson.encode({parent = ARGV[4]}))
end
redis.call('INCRBY', KEYS[3], #children)
local entry = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[4], 'priority', ARGV[7], 'type', ARGV[8],
  'payload', ARGV[9], 'time', now, 'agent', ARGV[10], 'tenant', tenant)
redis.call('HSET', KEYS[1], 'entry_id', entry)
redis.call('INCR', KEYS[3])
if tenant ~= '' then redis.call('HINCRBY', KEYS[8], tenant, 1 + #children) end
if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[9], ARGV[4], 'EX', ARGV[6]) end
emit('queued', cjson.encode({priority = tonumber(ARGV[7])}))
return {ARGV[4], 0}
"""

# Start an attempt. Returns {attempt, checkpoint} or {0, why} when the task must not run: finished,
# cancelled meanwhile (a cancel flagged while its worker was lost ends it here), or out of attempts
# (then it goes to the dead letters with the reason). A tool that cannot resume gets no checkpoint,
# and the record counts the restart. Preemptions do not use up attempts.
# ARGV: now, group, retention, worker, resumable (1/0), max_attempts
START = _COMMON + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, 'missing'} end
if status ~= 'queued' and status ~= 'running' and status ~= 'preempted' then
  local entry = redis.call('HGET', KEYS[1], 'entry_id')
  if entry then redis.call('XACK', KEYS[2], group, entry) end
  return {0, status}
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  finalize('cancelled', '{}')
  return {0, 'cancelled'}
end
local used = num('attempts') - num('preemptions') - num('attempts_base')
if used >= tonumber(ARGV[6]) then
  local reason = redis.call('HGET', KEYS[1], 'last_failure') or 'attempts exhausted'
  local message = 'gave up after ' .. used .. ' attempts: ' .. reason
  local dead = redis.call('XADD', KEYS[7], '*', 'task_id', redis.call('HGET', KEYS[1], 'task_id'),
    'reason', message, 'attempts', used, 'time', now)
  local err = cjson.encode({code = -32007, message = message, retryable = true})
  redis.call('HSET', KEYS[1], 'error', err, 'dead_letter', dead)
  finalize('failed', '{"error":' .. err .. '}')
  return {0, 'dead_letter'}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[4], 'started_at', now)
if not redis.call('HGET', KEYS[1], 'first_started_at') then redis.call('HSET', KEYS[1], 'first_started_at', now) end
local checkpoint = redis.call('HGET', KEYS[1], 'checkpoint')
local resumed = checkpoint and ARGV[5] == '1'
if checkpoint and not resumed then
  redis.call('HINCRBY', KEYS[1], 'restarts', 1)
  redis.call('HDEL', KEYS[1], 'checkpoint', 'resumed_from')
elseif resumed then
  redis.call('HSET', KEYS[1], 'resumed_from', checkpoint)
end
emit('running', '{"attempt":' .. attempt .. ',"worker":' .. cjson.encode(ARGV[4]) ..
  ',"resumed_from":' .. (resumed and checkpoint or 'null') .. '}')
return {attempt, resumed and checkpoint or '', redis.call('HGET', KEYS[1], 'corrected_input') or ''}
"""

# Fenced: only the current attempt of a running task may report. ARGV: now, group, retention, attempt, ...
_FENCE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[4] then
  return 0
end
"""

# Progress and/or a checkpoint (appended to the bounded checkpoint stream, latest kept on the record).
# ARGV: now, group, retention, attempt, progress JSON or '', checkpoint JSON or '', max checkpoints
UPDATE = _COMMON + _FENCE + """
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[5])
  emit('progress', ARGV[5])
end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'checkpoint', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'checkpoints', 1)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'state', ARGV[6], 'attempt', ARGV[4], 'time', now)
end
return 1
"""

# Preempted: the attempt ends without a result; the task waits to resume (its entry stays pending).
# ARGV: now, group, retention, attempt
PREEMPT = _COMMON + _FENCE + """
redis.call('HSET', KEYS[1], 'status', 'preempted', 'preempted_at', now)
redis.call('HINCRBY', KEYS[1], 'preemptions', 1)
emit('preempted', '{"attempt":' .. ARGV[4] .. '}')
return 1
"""

# Store the final state once, fenced by attempt: a stale attempt's late result is refused.
# ARGV: now, group, retention, attempt, status, result JSON or '', error JSON or ''
FINISH = _COMMON + _FENCE + """
local data = {}
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[6]); data[#data + 1] = '"result":' .. ARGV[6] end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[7]); data[#data + 1] = '"error":' .. ARGV[7] end
finalize(ARGV[5], '{' .. table.concat(data, ',') .. '}', ARGV[6] ~= '' and ARGV[6] or nil)
return 1
"""

# Cancel: a queued, preempted or waiting task is cancelled at once (its children too); a running one is flagged for
# its worker. Returns the status after, or nil if there is no such task.  ARGV: now, group, retention
CANCEL = _COMMON + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'queued' or status == 'preempted' or status == 'waiting' then
  finalize('cancelled', '{}')
  return 'cancelled'
end
if status == 'running' then redis.call('HSET', KEYS[1], 'cancel_requested', '1') end
return status
"""

# Why the last attempt was lost (worker died, went silent); named in the dead letter if it comes to that.
# ARGV: now, group, retention, reason
NOTE_FAILURE = _COMMON + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' or status == 'queued' or status == 'preempted' then
  redis.call('HSET', KEYS[1], 'last_failure', ARGV[4])
  emit('attempt_lost', cjson.encode({reason = ARGV[4]}))
end
return 1
"""

# Requeue a dead letter: a fresh stream entry and a fresh allowance of attempts.
# ARGV: now, group, retention, priority, type, payload, agent, tenant
REQUEUE = _COMMON + """
local dead = redis.call('HGET', KEYS[1], 'dead_letter')
if redis.call('HGET', KEYS[1], 'status') ~= 'failed' or not dead then return 0 end
redis.call('XDEL', KEYS[7], dead)
redis.call('HDEL', KEYS[1], 'dead_letter', 'error', 'finished_at', 'last_failure')
redis.call('HSET', KEYS[1], 'attempts_base', num('attempts') - num('preemptions'), 'status', 'queued')
for _, key in ipairs({KEYS[1], KEYS[5], KEYS[6]}) do redis.call('PERSIST', key) end
local entry = redis.call('XADD', KEYS[2], '*', 'task_id', redis.call('HGET', KEYS[1], 'task_id'),
  'priority', ARGV[4], 'type', ARGV[5], 'payload', ARGV[6], 'time', now, 'agent', ARGV[7], 'tenant', ARGV[8])
redis.call('HSET', KEYS[1], 'entry_id', entry)
redis.call('INCR', KEYS[3])
count_tenant(KEYS[1], 1)
emit('queued', '{"requeued":true}')
return 1
"""

# Correct a task that has not started yet (inject): its priority and/or input. The corrected input is
# what the next START hands the worker, whatever the stream entry says.
# ARGV: now, group, retention, priority ('' = keep), input JSON ('' = keep), who
CORRECT = _COMMON + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'preempted' then return status or 'missing' end
local changes = {who = ARGV[6]}
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'priority', ARGV[4])
  changes.priority = tonumber(ARGV[4])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'input', ARGV[5], 'corrected_input', ARGV[5])
  changes.input = cjson.decode(ARGV[5])
end
emit('corrected', cjson.encode(changes))
return 'corrected'
"""

NAMES = ("SUBMIT", "START", "UPDATE", "PREEMPT", "FINISH", "CANCEL", "NOTE_FAILURE", "REQUEUE", "CORRECT")
