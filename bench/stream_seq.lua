-- wrk, one connection: W3 as a server-held sequence. Each chunk names the sequence instead of carrying the
-- states (the server keeps them); every pass over the chunks is a new sequence, started by its first chunk
-- and ended by its last.
local chunks = {}
for line in io.lines(os.getenv("CHUNKS_FILE")) do chunks[#chunks + 1] = line end
local i, pass = 1, 1
dofile(os.getenv("BENCH_DIR") .. "/report.lua")  -- done(): the figures as one JSON line
wrk.method = "POST"
wrk.path = "/predict"
wrk.headers["Content-Type"] = "application/json"

function request()
  local sequence = string.format('{"id":"w3-%d","start":%s,"end":%s}', pass, tostring(i == 1), tostring(i == #chunks))
  return wrk.format(nil, nil, nil, '{"inputs":[' .. chunks[i] .. '],"sequence":' .. sequence .. '}')
end

function response(status, headers, body)
  if status ~= 200 then error("status " .. status .. ": " .. body) end
  i = i + 1
  if i > #chunks then i, pass = 1, pass + 1 end
end
