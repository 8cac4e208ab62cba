-- Pages of a listing, newest first: sorted sets of ids scored by creation time (ms) merged in the order
-- (created, id), both descending; each id examined is turned into a row (or skipped) by `row_of`. At most
-- `budget` ids are examined per call; the caller goes on from the last one examined (the floor).
-- created_min, created_max: ms, inclusive and exclusive; after_ms, after_id: only ids after this one in the
-- order ('' = from the newest).
-- Returns {rows, exhausted (1: nothing older is left in the sets), floor_ms, floor_id}.
local FIRST_CHUNK, MAX_CHUNK = 8, 256  -- a set read a little at first (most sets of a merge give few rows), then more

local function page_of(keys, created_min, created_max, after_ms, after_id, limit, budget, row_of)
  local cursor_ms = after_ms ~= '' and tonumber(after_ms) or nil
  local high = '(' .. created_max
  if cursor_ms and cursor_ms < tonumber(created_max) then high = after_ms end
  local streams = {}
  for _, key in ipairs(keys) do streams[#streams + 1] = {key = key, buf = {}, at = 1, offset = 0, chunk = FIRST_CHUNK} end

  -- The stream's next id and its score, fetched a chunk at a time; nil when it has no more in the range.
  local function head(stream)
    if stream.at > #stream.buf then
      if stream.done then return nil end
      local chunk = stream.chunk
      stream.buf = redis.call('ZREVRANGEBYSCORE', stream.key, high, created_min, 'WITHSCORES', 'LIMIT', stream.offset,
                              chunk)
      stream.offset, stream.at, stream.chunk = stream.offset + chunk, 1, math.min(2 * chunk, MAX_CHUNK)
      if #stream.buf < 2 * chunk then stream.done = true end
      if #stream.buf == 0 then return nil end
    end
    return stream.buf[stream.at], tonumber(stream.buf[stream.at + 1])
  end

  local rows, examined, floor_ms, floor_id = {}, 0, false, false
  while #rows < limit and examined < budget do
    local best, best_id, best_ms
    for _, stream in ipairs(streams) do
      local id, ms = head(stream)
      if id and (not best or ms > best_ms or (ms == best_ms and id > best_id)) then
        best, best_id, best_ms = stream, id, ms
      end
    end
    if not best then break end
    best.at = best.at + 2
    -- ids of the cursor's millisecond up to the cursor itself were examined before (not counted: they are few)
    if not (cursor_ms and best_ms == cursor_ms and best_id >= after_id) then
      examined = examined + 1
      floor_ms, floor_id = string.format('%.0f', best_ms), best_id
      local row = row_of(best_id)
      if row then rows[#rows + 1] = row end
    end
  end
  local exhausted = 1
  for _, stream in ipairs(streams) do
    if head(stream) then
      exhausted = 0
      break
    end
  end
  return {rows, exhausted, floor_ms, floor_id}
end
