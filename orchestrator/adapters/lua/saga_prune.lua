#!lua flags=allow-oom
-- Drop finished sagas whose state expired from the listing's sets, oldest first, at most `count`; how many.
-- KEYS: expiry
-- ARGV: tag, now_ms, count
local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', now_ms, 'LIMIT', 0, tonumber(count))
for _, member in ipairs(due) do
  local tenant, status, id = string.match(member, '^([^:]*):([^:]*):(.*)$')
  redis.call('ZREM', tag .. ':ix:' .. tenant .. ':s:' .. status, id)
  redis.call('ZREM', expiry, member)
end
return #due
