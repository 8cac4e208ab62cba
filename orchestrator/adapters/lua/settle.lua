#!lua flags=allow-oom
-- Record what a worker's running attempts did since its last call, many tasks at once: progress and
-- checkpoints, preemptions (the task goes back to its place in the queue), requests for input (the task waits,
-- holding no slot, until `provide_input` answers) and final states (stored once).
-- Every change is fenced by the attempt number: a stale attempt's report is refused. A retried call (its
-- reply lost) finds its own changes already made and answers as the first did.
-- items: {{task id, attempt, outcome ('' = still running, 'preempted', 'input_required', 'succeeded', 'failed',
--          'cancelled'), result, error, {progress, …}, checkpoint, asked}, …} (JSON text, '' when absent; asked:
--          input_required's requests, an object of key → JSON text)
-- Returns per item: 1 stored, 2 stored by an earlier call of this attempt, 0 refused (stale).
-- USES: common, due
-- KEYS: active
-- ARGV: items, stats, parent_failed_code
local replies = {}
for i, item in ipairs(cjson.decode(items)) do
  local id, attempt, outcome, result, err, progress, checkpoint, asked = unpack(item)
  local rec = load(id)
  if not rec or rec.at ~= attempt then
    replies[i] = 0
  elseif rec.s ~= 'running' then
    -- a retry of a call that went through: the attempt already ended the way it says
    replies[i] = (outcome ~= '' and rec.s == outcome) and 2 or 0
  else
    for _, report in ipairs(progress) do
      rec.pg = report
      emit(rec, 'progress', report)
    end
    if checkpoint ~= '' then
      rec.cp = checkpoint
      rec.ck = (rec.ck or 0) + 1
    end
    if outcome == 'preempted' then
      rec.s = 'preempted'
      rec.pe = (rec.pe or 0) + 1
      release_entry(rec)
      unmark_running(rec)
      enqueue(rec, false)
      emit(rec, 'preempted', '{"attempt":' .. attempt .. '}')
      save(rec)
    elseif outcome == 'input_required' then
      -- its slot and delivery go, its checkpoint stays; it is no queue's until answered (a stored record only)
      rec.s = 'input_required'
      rec.ir = (rec.ir or 0) + 1  -- not an attempt used up: like a preemption, it does not count against max_attempts
      rec.iq = cjson.decode(asked)
      release_entry(rec)
      unmark_running(rec)
      await_input(rec)  -- with a deadline: failed at it, answered or not
      emit(rec, 'input_required', '{"attempt":' .. attempt .. ',"requests":' .. requests_json(rec.iq) .. '}')
      save(rec)
      finished_ids[#finished_ids + 1] = rec.i  -- waiters stop waiting: the task needs someone
    elseif outcome ~= '' then
      if result ~= '' then rec.r = result end
      if err ~= '' then rec.e = err end
      finalize(rec, outcome, '{}', parent_failed_code)
    else
      save(rec)
    end
    replies[i] = 1
  end
end
count_stats(stats)
announce()
announce_due()
return replies
