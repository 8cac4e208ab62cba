-- Shared by every task script (the loader puts it after the script's header). A task is one JSON record
-- (see orchestrator/codec.py for its members); these functions move it between states and keep its queue,
-- its counters and its history. Only members the orchestrator itself writes are decoded: client and tool
-- data stay JSON text.
-- ARGV: tag, now, prefix, retention_s, max_events
now = tonumber(now)
local CLOCKS = tag .. ':clock'
local SCALE = 1048576  -- a queue score is virtual start time * SCALE + arrival number (mod SCALE)
local finished_ids = {}  -- announced once, at the end of the script
local woken = {}  -- worker types whose idle workers are told to take

local function record_key(id) return tag .. ':t:' .. id end
local function level_key(w, p) return tag .. ':q:' .. w .. ':' .. p end
local function run_key(w) return tag .. ':run:' .. w end

-- The secondary index of `list_tasks` (see adapters/keys.py): per tenant and status, a sorted set of task ids
-- scored by creation time (ms); a task is in exactly one. Every finished task also waits in the expiry set until
-- its record expires, when the prune drops it from the index. `save` keeps them: a record's status as indexed is
-- the one it was loaded with, so a status change moves the task between sets in the same step.
local indexed = {}  -- task id → its status as the index has it (as loaded)
local function ix_key(tenant, status) return tag .. ':ix:' .. tenant .. ':s:' .. status end
local function expiry_member(rec) return (rec.n or '') .. ':' .. rec.s .. ':' .. rec.i end

local function index(rec)
  local was = indexed[rec.i]
  if was == rec.s then return end
  local tenant = rec.n or ''
  if was then
    redis.call('ZREM', ix_key(tenant, was), rec.i)
  else  -- a new record: its tenant counted
    redis.call('HINCRBY', tag .. ':ix:tenants', tenant, 1)
  end
  redis.call('ZADD', ix_key(tenant, rec.s), rec.c, rec.i)
  indexed[rec.i] = rec.s
end

-- Drop finished tasks whose records expired from the indexes, oldest first, at most `count`; how many.
local function prune(count)
  local expiry = tag .. ':ix:expiry'
  local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, count)
  for _, member in ipairs(due) do
    local tenant, status, id = string.match(member, '^([^:]*):([^:]*):(.*)$')
    redis.call('ZREM', ix_key(tenant, status), id)
    if redis.call('HINCRBY', tag .. ':ix:tenants', tenant, -1) <= 0 then redis.call('HDEL', tag .. ':ix:tenants', tenant) end
    redis.call('ZREM', expiry, member)
  end
  return #due
end

local function load(id)
  local raw = redis.call('GET', record_key(id))
  if not raw then return nil end
  local rec = cjson.decode(raw)
  indexed[id] = rec.s
  return rec
end

-- KEEPTTL: a finished record re-saved (a rerun named in it) still expires with its index entry.
local function save(rec)
  index(rec)
  redis.call('SET', record_key(rec.i), cjson.encode(rec), 'KEEPTTL')
end

local function owner(rec) return rec.n or rec.a or '' end

-- Append an event to the task's history (bounded: the oldest progress events go first) and publish it live.
-- `data` is JSON text.
local function emit(rec, kind, data, quiet)
  local seq = (rec.sq or 0) + 1
  rec.sq = seq
  local h = rec.h or {}
  h[#h + 1] = {seq, kind, now, data}
  if #h > tonumber(max_events) then  -- the oldest progress report goes, else the oldest event after the first
    local drop = 2
    for i = 1, #h do
      if h[i][2] == 'progress' then drop = i break end
    end
    table.remove(h, drop)
  end
  rec.h = h
  if not quiet then redis.call('PUBLISH', prefix .. ':ev:' .. rec.i, cjson.encode({seq, kind, now, data})) end
end

-- Queue a task in its level. A new arrival gets a fair place: its tenant's next virtual start time, never
-- before the level's clock (start-time fair queueing, so tenants at one priority are served round-robin);
-- a task coming back (preempted, lost) keeps the place it had.
local function enqueue(rec, fresh)
  local lane = rec.w .. ':' .. rec.p
  if fresh or not rec.sc then
    local clock = tonumber(redis.call('HGET', CLOCKS, lane) or '0')
    local fair = tag .. ':f:' .. lane
    local start = math.max(clock, tonumber(redis.call('ZSCORE', fair, owner(rec)) or '0'))
    redis.call('ZADD', fair, start + 1, owner(rec))
    local arrival = redis.call('HINCRBY', CLOCKS, 'seq', 1) % SCALE
    rec.sc = string.format('%.0f', start * SCALE + arrival)
  end
  redis.call('ZADD', level_key(rec.w, rec.p), rec.sc, rec.i)
  woken[rec.w] = true
end

local function count_tenant(rec, by)
  if rec.n then
    local key = tag .. ':tenants'
    if redis.call('HINCRBY', key, rec.n, by) <= 0 then redis.call('HDEL', key, rec.n) end
  end
end

-- A running task's marks: in the set of every running task (status) and among the victims (preemption).
local function mark_running(rec, victim_rank)
  redis.call('ZADD', tag .. ':running', now, rec.i)
  if victim_rank then redis.call('ZADD', run_key(rec.w), victim_rank, rec.i) end
end

local function unmark_running(rec)
  redis.call('ZREM', tag .. ':running', rec.i)
  redis.call('ZREM', run_key(rec.w), rec.i)
end

local function release_entry(rec)
  if rec.ei then
    redis.call('XACK', tag .. ':tasks', 'workers', rec.ei)
    redis.call('XDEL', tag .. ':tasks', rec.ei)
    rec.ei = nil
  end
end

local finalize

-- A waiting fanout child: queued (its parent succeeded) or cancelled (it did not).
local function release(child, parent_id, status, parent_failed_code)
  if status == 'succeeded' then
    child.s = 'queued'
    enqueue(child, true)
    emit(child, 'queued', cjson.encode({parent = parent_id}))
    save(child)
  else
    child.e = cjson.encode({code = tonumber(parent_failed_code), message = 'parent ' .. parent_id .. ' ended ' .. status,
                            retryable = false})
    finalize(child, 'cancelled', '{}', parent_failed_code)
  end
end

-- When a task ends, its waiting children are released in the same step. A child in another shard (a task
-- accepted before shards, see the upgrade) is left to the outbox, which the shard's router delivers.
local function release_children(rec, status, parent_failed_code)
  for _, child_id in ipairs(rec.ch or {}) do
    local child = load(child_id)
    if child == nil then
      redis.call('XADD', tag .. ':outbox', '*', 'child', child_id, 'parent', rec.i, 'status', status)
    elseif child.s == 'waiting' then
      release(child, rec.i, status, parent_failed_code)
    end
  end
end

-- The end of a task: final state, history, children, delivery acknowledged, counters, expiry, announcement.
finalize = function(rec, status, data, parent_failed_code)
  rec.s = status
  rec.fn = now
  rec.cr = nil
  rec.iq = nil  -- a task cancelled while it waited for input waits no more
  emit(rec, status, data)
  release_children(rec, status, parent_failed_code)
  release_entry(rec)
  unmark_running(rec)
  redis.call('DECR', tag .. ':active')
  count_tenant(rec, -1)
  save(rec)
  redis.call('EXPIRE', record_key(rec.i), retention_s)
  redis.call('ZADD', tag .. ':ix:expiry', now + retention_s * 1000, expiry_member(rec))
  prune(2)  -- as many expire as finish (a retention ago): the indexes keep up without a sweep while tasks finish
  finished_ids[#finished_ids + 1] = rec.i
end

-- A task's pending input requests (key → JSON text) as one JSON object, their texts undecoded.
local function requests_json(requests)
  local parts = {}
  for key, text in pairs(requests or {}) do parts[#parts + 1] = cjson.encode(key) .. ':' .. text end
  table.sort(parts)
  return '{' .. table.concat(parts, ',') .. '}'
end

-- Tell whoever listens: idle workers of the pools that got tasks, waiters of the tasks that finished.
local function announce()
  for w in pairs(woken) do redis.call('PUBLISH', prefix .. ':wake:' .. w, '1') end
  if #finished_ids > 0 then redis.call('PUBLISH', prefix .. ':finished', table.concat(finished_ids, ' ')) end
end

-- Analytics counters computed by the caller, `{minute, keep_s, {{key suffix ('' = all tasks, '@tenant'),
-- {field, by, …}}, …}}`, into the minute's hashes (kept keep_s) and, for all tasks, the totals.
local function count_stats(stats_json)
  if stats_json == '' then return end
  local stats = cjson.decode(stats_json)
  for _, group in ipairs(stats[3]) do
    local key = tag .. ':stats:' .. stats[1] .. group[1]
    local counts = group[2]
    for i = 1, #counts, 2 do
      redis.call('HINCRBY', key, counts[i], counts[i + 1])
      if group[1] == '' then redis.call('HINCRBY', tag .. ':totals', counts[i], counts[i + 1]) end
    end
    redis.call('EXPIRE', key, stats[2])
  end
end
