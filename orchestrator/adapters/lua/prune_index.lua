#!lua flags=allow-oom
-- Drop finished tasks whose records expired from the secondary indexes (see common.lua), oldest first, at most
-- `count`: what the router's sweep does for a shard where no task finishes. Allowed while Redis is out of
-- memory: it only frees. Returns how many were dropped.
-- USES: common
-- KEYS: active
-- ARGV: count
return prune(tonumber(count))
