#!lua
-- A tenant's long-lived connections of one kind (event streams, MCP sessions): take a slot until `until_ms`,
-- or refresh the one `member` holds; at `limit` slots, refuse. Slots left by a process that died run out.
-- Returns 0 when held, else the milliseconds until the earliest slot runs out. Timed by Redis's clock.
-- KEYS: slots
-- ARGV: member, limit, hold_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
local held = redis.call('ZSCORE', slots, member)
if not held and redis.call('ZCARD', slots) >= tonumber(limit) then
  local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(first[2]) - now)
end
redis.call('ZADD', slots, now + tonumber(hold_ms), member)
local last = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', slots, tonumber(last[2]))
return 0
