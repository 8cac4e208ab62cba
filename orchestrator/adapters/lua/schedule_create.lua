#!lua flags=allow-oom
-- Store a new schedule and make it due at its first tick, unless its tenant has `max_per_tenant` already:
-- then the number it has (negated, minus one: -1 - count), and nothing is written.
-- KEYS: schedule, due, listed, tenants
-- ARGV: schedule_id, spec, tenant, next_ms, created_ms, max_per_tenant
local count = redis.call('ZCARD', KEYS[3])
if count >= tonumber(max_per_tenant) then return -1 - count end
redis.call('HSET', KEYS[1], 'spec', spec, 'tenant', tenant, 'next_ms', next_ms, 'paused', '0', 'fired', 0,
  'skipped', 0, 'created_ms', created_ms)
redis.call('ZADD', KEYS[2], next_ms, schedule_id)
redis.call('ZADD', KEYS[3], created_ms, schedule_id)
redis.call('SADD', KEYS[4], tenant)
return 1
