-- A tenant's submit meter (GCRA on Redis's clock): `burst` submits back to back, then one every 1/rate s.
-- Returns nil and counts the submit when admitted, else how many seconds until one would be.
local function meter_submit(key, tenant, rate, burst)
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local interval = 1 / rate
  local tat = math.max(tonumber(redis.call('HGET', key, tenant) or '0'), clock)
  local early = tat - clock - (burst - 1) * interval
  if early > 0 then return early end
  redis.call('HSET', key, tenant, string.format('%.6f', tat + interval))
  return nil
end
