#!lua
-- Count a submit against a tenant's submit meter (the same one run_task uses, in the tenant's shard).
-- Returns false when admitted, else the seconds until a submit would be.
-- USES: meter
-- KEYS: meter
-- ARGV: tenant, rate, burst
local wait = meter_submit(meter, tenant, tonumber(rate), tonumber(burst))
if wait then return tostring(wait) end
return false
