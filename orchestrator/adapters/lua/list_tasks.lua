#!lua flags=no-writes
-- One page of this shard's tasks, newest first, from the secondary index `save` keeps (see common.lua): per
-- tenant asked for, the sets of the statuses asked for, merged. Every record read is checked against the other
-- filters, so a filter the sets do not answer (tool, worker type, priority) costs a scan, bounded by `budget`
-- (see pages.lua). Tasks whose record expired (not pruned yet) are skipped.
-- tenants: JSON list ('' = tasks of no tenant), or '*' for every tenant with tasks here; statuses: JSON list
-- (every status when the caller filters none); tool, worker_type: '' for any.
-- Returns a page (see pages.lua) whose rows are the JSON text of a record's summary members (codec.summary_of).
-- USES: common, pages
-- KEYS: active
-- ARGV: tenants, statuses, tool, worker_type, priority_min, priority_max, created_min, created_max, after_ms, after_id, limit, budget
local pmin, pmax = tonumber(priority_min), tonumber(priority_max)
local wanted = cjson.decode(statuses)

-- (cjson writes '/' as '\/'; our names hold no other escape)
local function text(raw, name)
  local value = string.match(raw, '"' .. name .. '":"([^"]*)"')
  return value and (string.gsub(value, '\\/', '/'))
end
local function number(raw, name) return tonumber(string.match(raw, '"' .. name .. '":(%-?%d+)')) end

-- (its status is the set's: `save` moves a task between sets in the step that changes it)
local function matches(raw)
  if tool ~= '' and text(raw, 't') ~= tool then return false end
  if worker_type ~= '' and text(raw, 'w') ~= worker_type then return false end
  if pmin > 0 or pmax < 10 then
    local p = number(raw, 'p')
    return p >= pmin and p <= pmax
  end
  return true
end

-- Top-level members only: client and tool data are JSON text inside the record, their quotes escaped.
local function row_of(id)
  local raw = redis.call('GET', record_key(id))
  if not raw or not matches(raw) then return nil end
  local row = {}
  for _, name in ipairs({'i', 's', 't', 'w', 'n', 'pa', 'sg'}) do row[name] = text(raw, name) end
  for _, name in ipairs({'p', 'c', 'st', 'fn'}) do row[name] = number(raw, name) end
  local at = string.find(raw, '"e":"', 1, true)
  if at then row.ec = tonumber(string.match(string.sub(raw, at, at + 200), 'code\\":(%-?%d+)')) end
  return cjson.encode(row)
end

local keys = {}
local names = tenants == '*' and redis.call('HKEYS', tag .. ':ix:tenants') or cjson.decode(tenants)
for _, tenant in ipairs(names) do
  for _, status in ipairs(wanted) do keys[#keys + 1] = ix_key(tenant, status) end
end
return page_of(keys, created_min, created_max, after_ms, after_id, tonumber(limit), tonumber(budget), row_of)
