#!lua flags=allow-oom
-- Put tasks stored before the listing's indexes existed (an upgrade) into them: each one not in its status's set
-- is added, and, finished, waits in the expiry set for what is left of its retention. Idempotent.
-- Returns how many were added.
-- USES: common
-- KEYS: active
-- ARGV: ids
local added = 0
for _, id in ipairs(cjson.decode(ids)) do
  local rec = load(id)
  if rec and not redis.call('ZSCORE', ix_key(rec.n or '', rec.s), id) then
    indexed[id] = nil  -- as a new record: its tenant counted
    index(rec)
    local ttl = redis.call('PTTL', record_key(id))
    if ttl > 0 then redis.call('ZADD', tag .. ':ix:expiry', now + ttl, expiry_member(rec)) end
    added = added + 1
  end
end
return added
