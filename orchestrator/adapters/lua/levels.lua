-- Which level of a worker type's queue goes next: the highest effective priority, where waiting `aging_ms`
-- raises a task's priority by one up to `cap` (below the preemption threshold, so aged work never overtakes
-- urgent work); on a tie the older head. Shared by take and peek.
local function head_of(w, p)
  local head = redis.call('ZRANGE', level_key(w, p), 0, 0)[1]
  if not head then return nil end
  local raw = redis.call('GET', record_key(head))
  if not raw then  -- the record expired under its queue entry: drop the entry
    redis.call('ZREM', level_key(w, p), head)
    return head_of(w, p)
  end
  -- a member name in quotes is matched only at the top level: client data is nested JSON text, its quotes escaped
  local created, ready = tonumber(string.match(raw, '"c":(%d+)')), string.match(raw, '"nb":(%d+)')
  return head, ready and math.max(created, tonumber(ready)) or created  -- a delayed task ages from its not_before
end

-- The best level's priority and its rank {effective priority, -created, priority}, or nil when all are empty.
local function best_level(w, aging_ms, cap)
  local best, best_rank
  for p = 10, 0, -1 do
    local head, created = head_of(w, p)
    if head then
      local effective = p
      if aging_ms > 0 and p < cap then effective = math.min(cap, p + math.floor((now - created) / aging_ms)) end
      local rank = {effective, -created, p}
      if not best_rank or rank[1] > best_rank[1] or (rank[1] == best_rank[1] and (rank[2] > best_rank[2] or
          (rank[2] == best_rank[2] and rank[3] > best_rank[3]))) then
        best, best_rank = p, rank
      end
      if aging_ms <= 0 then break end  -- strict priority: the highest non-empty level wins
    end
  end
  return best, best_rank
end
