-- wrk: POST one fixed body (BODY_FILE) to BODY_PATH (default /predict); with HEADER_LENGTH set, the body
-- is an Open Inference Protocol binary request whose JSON header is that many bytes.
-- Reports percentiles as JSON in done().
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
dofile(os.getenv("BENCH_DIR") .. "/report.lua")  -- done(): the figures as one JSON line
wrk.method = "POST"
wrk.path = os.getenv("BODY_PATH") or "/predict"
wrk.body = body
if os.getenv("HEADER_LENGTH") then
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = os.getenv("HEADER_LENGTH")
else
  wrk.headers["Content-Type"] = "application/json"
end

function response(status, headers, body)
  if status ~= 200 then error("status " .. status .. ": " .. body) end
end
