#!lua flags=allow-oom
-- A lease with a fencing token: acquire it if it is free (the token grows with every new holder), renew it if
-- it is ours, or release it. Returns the holder value `<name>:<token>` when ours, else false.
-- KEYS: lease, fence
-- ARGV: name, ttl_ms, action
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #name + 1) == name .. ':' then
  if action == 'release' then redis.call('DEL', KEYS[1]) return false end
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  return current
end
if current or action == 'release' then return false end
local holder = name .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], holder, 'PX', ttl_ms)
return holder
