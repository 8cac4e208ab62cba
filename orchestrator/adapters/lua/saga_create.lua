#!lua
-- Store a new saga, unless its idempotency key names an earlier one, and list it (its tenant's set of running
-- sagas, by creation time).
-- Returns {saga id holding the key (ours, or an earlier saga's), 1 when it is an earlier one}.
-- KEYS: idempotency, saga, active, listed, tenants
-- ARGV: saga_id, state, idempotency_ttl_s, has_key, created_ms, tenant
if has_key == '1' then
  local existing = redis.call('GET', idempotency)
  if existing then return {existing, 1} end
end
if has_key == '1' then redis.call('SET', idempotency, saga_id, 'EX', tonumber(idempotency_ttl_s)) end
redis.call('SET', saga, state)
redis.call('SADD', active, saga_id)
redis.call('ZADD', listed, created_ms, saga_id)
redis.call('SADD', tenants, tenant)
return {saga_id, 0}
