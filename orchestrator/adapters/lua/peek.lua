#!lua flags=no-writes
-- The rank of the task a take would start next in this shard ({effective priority, -created, priority}), or
-- false when the worker type's queue is empty here: a worker compares shards before taking.
-- USES: common, levels
-- KEYS: active
-- ARGV: worker_type, aging_ms, cap
local best, rank = best_level(worker_type, tonumber(aging_ms), tonumber(cap))
if not best then return false end
return rank
