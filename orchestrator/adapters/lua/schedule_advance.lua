#!lua flags=allow-oom
-- Record the fires of a schedule's due ticks and move it to its next tick — only if it still stands where the
-- firer read it (`expected_ms`, not paused or deleted meanwhile) and the firer still holds the pools lease
-- (`holder`: its fencing token). 1 when advanced; 0 when it moved meanwhile (another firer, a pause, a delete:
-- its fires stand, found again by their idempotency keys); -1 when fenced.
-- KEYS: schedule, due, runs, lease
-- ARGV: schedule_id, expected_ms, next_ms, runs_json, fired, skipped, last_task, holder, keep_runs
if holder ~= '' and redis.call('GET', KEYS[4]) ~= holder then return -1 end
local state = redis.call('HMGET', KEYS[1], 'next_ms', 'paused')
if state[1] ~= expected_ms or state[2] ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'next_ms', next_ms)
redis.call('HINCRBY', KEYS[1], 'fired', fired)
redis.call('HINCRBY', KEYS[1], 'skipped', skipped)
if last_task ~= '' then redis.call('HSET', KEYS[1], 'last_task', last_task) end
redis.call('ZADD', KEYS[2], 'XX', next_ms, schedule_id)
for _, run in ipairs(cjson.decode(runs_json)) do redis.call('LPUSH', KEYS[3], run) end
redis.call('LTRIM', KEYS[3], 0, tonumber(keep_runs) - 1)
return 1
