#!lua
-- Add a version of an artifact and make it live; a publication id seen before answers its first result (a
-- retried deploy adds no version). The artifact expires retention_s after its last change.
-- Returns {version, previous live version or -1}.
-- KEYS: versions, live, published
-- ARGV: publication_id, content, retention_s
local seen = redis.call('HGET', published, publication_id)
if seen then return cjson.decode(seen) end
local version = redis.call('HLEN', versions) + 1
local previous = tonumber(redis.call('GET', live) or '-1')
redis.call('HSET', versions, version, content)
redis.call('SET', live, version)
local result = {version, previous}
redis.call('HSET', published, publication_id, cjson.encode(result))
for _, key in ipairs({versions, live, published}) do redis.call('EXPIRE', key, retention_s) end
return result
