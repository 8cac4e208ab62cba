#!lua
-- Accept tasks (each with its fanout children, waiting for it): idempotency, backpressure and the tenant's
-- quota checked, then the records written and the tasks queued — all or nothing per task. A retried call
-- (reply lost) finds the records and answers as the first did. Refused while Redis is out of memory.
-- items: {{record, idempotency key or '', its ttl_s, the tenant's max active (0: none), its submits per
--          second (0: none), its burst, {child record, …}}, …}
-- Returns per item {task id, duplicate 1/0} or {false, refusal, figure}: queue_full (the shard's active
-- tasks), max_active_tasks (the tenant's), submits_per_s (seconds until a submit would fit).
-- USES: common, meter, due
-- KEYS: active
-- ARGV: items, max_active, urgent_priority
local replies, urgent = {}, {}

local function accept(item)
  local rec = cjson.decode(item[1])
  local idem, idem_ttl, quota, rate, burst, children = item[2], item[3], item[4], item[5], item[6], item[7]
  if redis.call('EXISTS', record_key(rec.i)) == 1 then return {rec.i, 0} end  -- this very call, retried
  local idem_key = tag .. ':k:' .. (rec.n or '') .. ':' .. idem
  if idem ~= '' then
    local existing = redis.call('GET', idem_key)
    if existing then return {existing, 1} end
  end
  local n = 1 + #children
  local active = tonumber(redis.call('GET', KEYS[1]) or '0')
  if active + n > tonumber(max_active) then return {false, 'queue_full', active} end
  if rec.n and quota > 0 then
    local mine = tonumber(redis.call('HGET', tag .. ':tenants', rec.n) or '0')
    if mine + n > quota then return {false, 'max_active_tasks', mine} end
  end
  if rec.n and rate > 0 then
    local wait = meter_submit(tag .. ':meter', rec.n, rate, burst)
    if wait then return {false, 'submits_per_s', tostring(wait)} end
  end
  for _, text in ipairs(children) do
    local child = cjson.decode(text)
    emit(child, 'waiting', cjson.encode({parent = rec.i}), true)
    save(child)
  end
  if rec.nb then  -- delayed: see due.lua
    schedule(rec)
    emit(rec, 'scheduled', string.format('{"priority":%d,"not_before":%.3f}', rec.p, rec.nb / 1000), true)
  else
    enqueue(rec, true)
    emit(rec, 'queued', '{"priority":' .. rec.p .. '}', true)
  end
  save(rec)
  redis.call('INCRBY', KEYS[1], n)
  count_tenant(rec, n)
  if idem ~= '' then redis.call('SET', idem_key, rec.i, 'EX', idem_ttl) end
  if rec.p >= tonumber(urgent_priority) and not rec.nb then urgent[rec.w] = true end
  return {rec.i, 0}
end

for i, item in ipairs(cjson.decode(items)) do replies[i] = accept(item) end
for w in pairs(urgent) do redis.call('PUBLISH', prefix .. ':urgent', w) end
announce()
announce_due()
return replies
