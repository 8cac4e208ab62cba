-- Store a new API key's record under its hash (the key itself is never stored), named as no working key is;
-- and forget a few keys that stopped working more than retain_s ago. A retry after a lost reply finds its own
-- record and answers 'created' again. Returns 'created', 'name taken' or 'hash taken' (nothing written then).
-- KEYS: records, names, revoked, ends, version
-- ARGV: digest, name, record, expires_at, now, retain_s, channel
local clock = tonumber(now)
local existing = redis.call('HGET', records, digest)
if existing then
  if existing == record then return 'created' end
  return 'hash taken'
end
local holder = redis.call('HGET', names, name)
if holder and redis.call('HEXISTS', records, holder) == 1 and redis.call('HEXISTS', revoked, holder) == 0 then
  local ends_at = redis.call('ZSCORE', ends, holder)
  if not ends_at or tonumber(ends_at) > clock then return 'name taken' end
end
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', ends, '-inf', clock - tonumber(retain_s), 'LIMIT', 0, 100)) do
  local raw = redis.call('HGET', records, gone)
  if raw then
    local ok, old = pcall(cjson.decode, raw)
    if ok and type(old) == 'table' and type(old.name) == 'string' and redis.call('HGET', names, old.name) == gone then
      redis.call('HDEL', names, old.name)
    end
  end
  redis.call('HDEL', records, gone)
  redis.call('HDEL', revoked, gone)
  redis.call('ZREM', ends, gone)
end
redis.call('HSET', records, digest, record)
redis.call('HSET', names, name, digest)
if expires_at ~= '' then redis.call('ZADD', ends, expires_at, digest) end
redis.call('INCR', version)
redis.call('PUBLISH', channel, 'created')
return 'created'
