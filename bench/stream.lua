-- wrk, one connection: a long sequence sent chunk by chunk (CHUNKS_FILE, one JSON chunk per line),
-- each request carrying the states of the previous answer. Starts over after the last chunk.
local chunks = {}
for line in io.lines(os.getenv("CHUNKS_FILE")) do chunks[#chunks + 1] = line end
local i, hn, cn = 1, nil, nil
dofile(os.getenv("BENCH_DIR") .. "/report.lua")  -- done(): the figures as one JSON line
wrk.method = "POST"
wrk.path = "/predict"
wrk.headers["Content-Type"] = "application/json"

function request()
  local body
  if hn then
    body = '{"inputs":[' .. chunks[i] .. '],"h0":' .. hn .. ',"c0":' .. cn .. '}'
  else
    body = '{"inputs":[' .. chunks[i] .. ']}'
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status ~= 200 then error("status " .. status .. ": " .. body) end
  i = i + 1
  if i > #chunks then
    i, hn, cn = 1, nil, nil
  else
    hn = body:match('"hn":(%b[])')
    cn = body:match('"cn":(%b[])')
  end
end

