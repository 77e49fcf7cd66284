-- wrk for make soak: post.lua's request, paced by SOAK_DELAY_MS per connection, and a count of
-- answers by status, gathered from every wrk thread's Lua state at the end.
dofile(os.getenv("BENCH_DIR") .. "/post.lua")
local pause = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
local threads = {}
statuses = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function delay()
  return pause
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local report = done
function done(summary, latency, requests)
  report(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + count end
  end
  local parts = {}
  for status, count in pairs(total) do parts[#parts + 1] = string.format('"%d": %d', status, count) end
  io.write("WRK_STATUS {" .. table.concat(parts, ", ") .. "}\n")
end
