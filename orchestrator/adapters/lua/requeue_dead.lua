#!lua
-- Put a dead letter back in the queue with a fresh allowance of attempts. Returns 1, or 0 if it is not one.
-- USES: common
-- KEYS: active
-- ARGV: task_id
local rec = load(task_id)
if not rec or rec.s ~= 'failed' or not rec.dd then return 0 end
redis.call('XDEL', tag .. ':dead', rec.dd)
redis.call('ZREM', tag .. ':ix:expiry', expiry_member(rec))  -- kept again: no longer expiring
rec.dd, rec.e, rec.fn, rec.lf = nil, nil, nil, nil
rec.ab = (rec.at or 0) - (rec.pe or 0) - (rec.ir or 0)
rec.s = 'queued'
enqueue(rec, true)
emit(rec, 'queued', '{"requeued":true}')
save(rec)
redis.call('PERSIST', record_key(rec.i))
redis.call('INCR', KEYS[1])
count_tenant(rec, 1)
announce()
return 1
