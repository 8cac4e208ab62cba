-- Delayed tasks (shared by the scripts that schedule, promote or cancel them; loaded after `common`). A
-- `scheduled` task waits in its worker type's due set (score: its not_before, ms), in no queue: it holds no slot
-- and no process remembers it. Promotion queues it as a new arrival at that moment (its fair place among the
-- tasks queued by then; aging counts from its not_before), in the same script that takes it out of the due set,
-- so each task is promoted exactly once whoever runs it (a router's promote, a worker's take).
local function due_key(w) return tag .. ':due:' .. w end
local soonest = nil  -- the earliest due time scheduled by this script: routers are told (see `announce_due`)

local function schedule(rec)
  rec.s = 'scheduled'
  redis.call('ZADD', due_key(rec.w), rec.nb, rec.i)
  if not soonest or rec.nb < soonest then soonest = rec.nb end
end

-- Tell the routers a task was scheduled (they sleep until the next due time they know of): one message per
-- script, its earliest due time (ms).
local function announce_due()
  if soonest then redis.call('PUBLISH', prefix .. ':scheduled', string.format('%.0f', soonest)) end
end

-- A task waiting for input (`input_required`) with a deadline waits in its worker type's input-deadline set
-- (score: the deadline, ms) too: come the deadline unanswered, it is queued again for a worker to fail it
-- ("deadline passed while it waited for input") — the one place a task's end is decided and counted.
local function input_deadline_key(w) return tag .. ':idl:' .. w end

local function await_input(rec)
  if not rec.dl then return end
  redis.call('ZADD', input_deadline_key(rec.w), rec.dl, rec.i)
  if not soonest or rec.dl < soonest then soonest = rec.dl end
end

-- Out of both sets: a delayed task cancelled before it was due, a waiting task answered or cancelled.
local function unschedule(rec)
  redis.call('ZREM', due_key(rec.w), rec.i)
  redis.call('ZREM', input_deadline_key(rec.w), rec.i)
end

-- Queue up to `limit` waiting tasks of worker type `w` whose deadline passed; the deadline (ms, a string) of
-- the next one left, or nil.
local function expire_waiting(w, limit)
  local key = input_deadline_key(w)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)) do
    redis.call('ZREM', key, id)
    local rec = load(id)
    if rec and rec.s == 'input_required' then
      rec.iq = nil
      rec.s = 'queued'
      enqueue(rec, false)
      emit(rec, 'queued', '{"deadline_passed":true}')
      save(rec)
    end
  end
  return redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]
end

-- Queue up to `limit` tasks of worker type `w` come due (the pool manager is told of urgent ones); the number
-- taken out of the due set, and the due time (ms, a string) of the next one, or nil.
local function promote_due(w, limit, urgent_priority)
  local key = due_key(w)
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
  local urgent = false
  for _, id in ipairs(ids) do
    redis.call('ZREM', key, id)
    local rec = load(id)
    if rec and rec.s == 'scheduled' then
      rec.s = 'queued'
      enqueue(rec, true)
      emit(rec, 'queued', '{"priority":' .. rec.p .. '}')
      save(rec)
      urgent = urgent or rec.p >= urgent_priority
    end
  end
  if urgent then redis.call('PUBLISH', prefix .. ':urgent', w) end
  return #ids, redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]
end
