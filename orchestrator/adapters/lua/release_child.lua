#!lua flags=allow-oom
-- Deliver an outbox entry: the parent (in another shard) of a waiting fanout child ended. Returns 1 when the
-- child was released now, 0 when there was nothing to do (released before, or gone).
-- USES: common
-- KEYS: active
-- ARGV: child_id, parent_id, status, parent_result, parent_failed_code
local child = load(child_id)
if not child or child.s ~= 'waiting' then return 0 end
if parent_result ~= '' then child.pr = parent_result end
release(child, parent_id, status, parent_failed_code)
announce()
return 1
