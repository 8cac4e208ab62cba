#!lua
-- Make a version of an artifact live again (-1: no live version). Returns 1, or 0 if there is no such version.
-- KEYS: versions, live, published
-- ARGV: version, retention_s
local wanted = tonumber(version)
if wanted == -1 then
  redis.call('DEL', live)
  return 1
end
if redis.call('HEXISTS', versions, wanted) == 0 then return 0 end
redis.call('SET', live, wanted)
for _, key in ipairs({versions, live, published}) do redis.call('EXPIRE', key, retention_s) end
return 1
