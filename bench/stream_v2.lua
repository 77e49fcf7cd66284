-- wrk, one connection: W3 over the Open Inference Protocol with binary tensors. CHUNKS_FILE holds the
-- chunks as raw float32, CHUNK_BYTES each; every request carries the previous answer's hn and cn bytes
-- back as they came. Starts over after the last chunk.
local f = assert(io.open(os.getenv("CHUNKS_FILE"), "rb"))
local raw = f:read("*a")
f:close()
local size = tonumber(os.getenv("CHUNK_BYTES"))
local count = math.floor(#raw / size)
local shape_x, shape_s = os.getenv("SHAPE_X"), os.getenv("SHAPE_S")
local i, hn, cn = 1, nil, nil
dofile(os.getenv("BENCH_DIR") .. "/report.lua")  -- done(): the figures as one JSON line
wrk.method = "POST"
wrk.path = os.getenv("BODY_PATH")
wrk.headers["Content-Type"] = "application/octet-stream"

local function tensor(name, shape, bytes)
  return string.format('{"name":"%s","shape":%s,"datatype":"FP32","parameters":{"binary_data_size":%d}}',
    name, shape, bytes)
end

function request()
  local x = raw:sub((i - 1) * size + 1, i * size)
  local inputs, blobs = tensor("x", shape_x, #x), x
  if hn then
    inputs = inputs .. "," .. tensor("h0", shape_s, #hn) .. "," .. tensor("c0", shape_s, #cn)
    blobs = blobs .. hn .. cn
  end
  local header = '{"inputs":[' .. inputs .. '],"parameters":{"binary_data_output":true}}'
  return wrk.format(nil, nil, {["Inference-Header-Content-Length"] = tostring(#header)}, header .. blobs)
end

function response(status, headers, body)
  if status ~= 200 then error("status " .. status .. ": " .. body) end
  i = i + 1
  if i > count then
    i, hn, cn = 1, nil, nil
    return
  end
  local length = tonumber(headers["Inference-Header-Content-Length"] or headers["inference-header-content-length"])
  local header = body:sub(1, length)
  local at, parts = length + 1, {}
  for name, bytes in header:gmatch('"name":"(%w+)".-"binary_data_size":(%d+)') do
    parts[name] = body:sub(at, at + tonumber(bytes) - 1)
    at = at + tonumber(bytes)
  end
  hn, cn = parts["hn"], parts["cn"]
end
