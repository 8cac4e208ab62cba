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

-- The record's top-level members a row shows, read in two passes over its text (no decoding): client and tool data
-- are JSON text inside the record, their quotes escaped, so a nested `"name":` never matches. (cjson writes '/'
-- as '\/'; the names read hold no other escape.)
local TEXTS = {i = true, s = true, t = true, w = true, n = true, pa = true, sg = true}
local NUMBERS = {p = true, c = true, st = true, fn = true}
local function summary(raw)
  local row = {}
  for name, value in string.gmatch(raw, '"(%a+)":"([^"]*)"') do
    if TEXTS[name] then row[name] = (string.gsub(value, '\\/', '/')) end
  end
  for name, value in string.gmatch(raw, '"(%a+)":(%-?%d+)') do
    if NUMBERS[name] then row[name] = tonumber(value) end
  end
  return row
end

local function matches(row)
  return (tool == '' or row.t == tool) and (worker_type == '' or row.w == worker_type)
    and row.p >= pmin and row.p <= pmax
end

-- (its status is the set's: `save` moves a task between sets in the step that changes it)
local function row_of(id)
  local raw = redis.call('GET', record_key(id))
  if not raw then return nil end
  local row = summary(raw)
  if not matches(row) then return nil end
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
