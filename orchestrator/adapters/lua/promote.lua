#!lua flags=allow-oom
-- Queue the delayed tasks come due in this shard (see due.lua), at most `limit` per worker type, and the tasks
-- whose deadline passed while they waited for input (for a worker to fail them): what a router
-- runs for the shards it holds, every router.promote_interval_s and when the next one is due (a worker's take
-- promotes its own type's too). Allowed while Redis is out of memory: accepted tasks still run.
-- Returns {promoted, the earliest due time (ms) of those left, or false}.
-- USES: common, due
-- KEYS: active
-- ARGV: worker_types, limit, urgent_priority
local promoted, earliest = 0, nil
for _, w in ipairs(cjson.decode(worker_types)) do
  local n, next_due = promote_due(w, tonumber(limit), tonumber(urgent_priority))
  promoted = promoted + n
  for _, at in ipairs({next_due or false, expire_waiting(w, tonumber(limit)) or false}) do
    if at and (not earliest or tonumber(at) < earliest) then earliest = tonumber(at) end
  end
end
announce()
return {promoted, earliest and string.format('%.0f', earliest) or false}
