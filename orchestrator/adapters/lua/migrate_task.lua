#!lua flags=allow-oom
-- Move one task of the layout before shards into its shard, in one step: its record is written only if absent
-- (queued in its level with a fresh fair place and counted, counted only while it waits for its parent, or kept
-- for the old record's remaining time once finished), its dead letter appended to the shard's, and its old keys
-- deleted. Legacy data only ever lives on one server, so the old keys (another hash tag) may be touched here.
-- record: the new record's JSON text (history included, no queue score); dead: '' or {reason, attempts,
-- time_ms} of its dead letter, whose old entry is `legacy_dead_id`.
-- Allowed while Redis is out of memory: the step frees more than it writes (the old hash and streams go), and an
-- upgrade must not stall halfway.
-- Returns 1 when the old keys were moved, 0 when they were gone (an earlier run moved them).
-- USES: common
-- KEYS: active, legacy, events, checkpoints, legacy_dead
-- ARGV: record, queue, counted, finished, dead, legacy_dead_id
if redis.call('EXISTS', legacy) == 0 then return 0 end
local rec = cjson.decode(record)
if redis.call('EXISTS', record_key(rec.i)) == 0 then
  if dead ~= '' then
    local d = cjson.decode(dead)
    rec.dd = redis.call('XADD', tag .. ':dead', '*', 'task_id', rec.i, 'reason', d[1], 'attempts', d[2], 'time', d[3])
  end
  if queue == '1' then enqueue(rec, true) end
  save(rec)
  if finished == '1' then
    local ttl = redis.call('PTTL', legacy)
    if ttl <= 0 then ttl = retention_s * 1000 end
    redis.call('PEXPIRE', record_key(rec.i), ttl)
    redis.call('ZADD', tag .. ':ix:expiry', now + ttl, expiry_member(rec))
  end
  if counted == '1' then
    redis.call('INCR', active)
    count_tenant(rec, 1)
  end
end
if legacy_dead_id ~= '' then redis.call('XDEL', legacy_dead, legacy_dead_id) end
redis.call('DEL', legacy, events, checkpoints)
announce()
return 1
