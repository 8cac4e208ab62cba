#!lua flags=allow-oom
-- Revoke the key named `name` that is not revoked yet: every replica refuses it once it reloads (published).
-- Allowed when Redis is out of memory: revoking must always work. Returns the key's record, or false.
-- KEYS: records, names, revoked, ends, version
-- ARGV: name, now, channel
local digest = redis.call('HGET', names, name)
if not digest then return false end
redis.call('HDEL', names, name)
local record = redis.call('HGET', records, digest)
if not record then return false end
redis.call('HSET', revoked, digest, now)
redis.call('ZADD', ends, 'LT', now, digest)
redis.call('INCR', version)
redis.call('PUBLISH', channel, 'revoked')
return record
