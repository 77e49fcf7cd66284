-- wrk: POST one fixed body (BODY_FILE) to /predict; report percentiles as JSON in done().
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
dofile(os.getenv("BENCH_DIR") .. "/report.lua")  -- done(): the figures as one JSON line
wrk.method = "POST"
wrk.path = "/predict"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

