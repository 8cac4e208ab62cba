#!lua
-- Store a new saga, unless its idempotency key names an earlier one.
-- Returns {saga id holding the key (ours, or an earlier saga's), 1 when it is an earlier one}.
-- KEYS: idempotency, saga, active
-- ARGV: saga_id, state, idempotency_ttl_s, has_key
if has_key == '1' then
  local existing = redis.call('GET', idempotency)
  if existing then return {existing, 1} end
end
if has_key == '1' then redis.call('SET', idempotency, saga_id, 'EX', tonumber(idempotency_ttl_s)) end
redis.call('SET', saga, state)
redis.call('SADD', active, saga_id)
return {saga_id, 0}
