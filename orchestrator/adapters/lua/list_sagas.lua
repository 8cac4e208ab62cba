#!lua flags=no-writes
-- One page of sagas, newest first, from the sets of the statuses asked for, per tenant (see saga_store.py);
-- the workflow filter is checked on each saga read, within `budget` (see pages.lua).
-- tenants: JSON list ('' = sagas of no tenant), or '*' for every tenant with sagas; statuses: JSON list (every
-- status when the caller filters none); workflow: '' for any.
-- Returns a page (see pages.lua) whose rows are JSON: {saga_id, workflow, status, tenant, priority, created_at,
-- finished_at, error}.
-- USES: pages
-- KEYS: tenants_set
-- ARGV: tag, tenants, statuses, workflow, created_min, created_max, after_ms, after_id, limit, budget
local FIELDS = {'saga_id', 'workflow', 'status', 'tenant', 'priority', 'created_at', 'finished_at', 'error'}

local function row_of(id)
  local raw = redis.call('GET', tag .. ':saga:' .. id)
  if not raw then return nil end
  local saga = cjson.decode(raw)
  if workflow ~= '' and saga.workflow ~= workflow then return nil end
  local row = {}
  for _, name in ipairs(FIELDS) do row[name] = saga[name] end
  return cjson.encode(row)
end

local keys = {}
local names = tenants == '*' and redis.call('SMEMBERS', tenants_set) or cjson.decode(tenants)
for _, tenant in ipairs(names) do
  for _, status in ipairs(cjson.decode(statuses)) do keys[#keys + 1] = tag .. ':ix:' .. tenant .. ':s:' .. status end
end
return page_of(keys, created_min, created_max, after_ms, after_id, tonumber(limit), tonumber(budget), row_of)
