-- wrk script for make bench. Arguments after `--`: MODE THREADS [...], THREADS
-- being wrk's -t (threads interleave: thread t takes ids FIRST+t, FIRST+t+THREADS...)
--   get                               GET the URL's path (wrk's default request)
--   walk FIRST LAST                   GET /api/v1/products/<id>, each request a
--                                     different id in FIRST..LAST (cache misses
--                                     while the walk does not wrap)
--   order FIRST LAST NONCE            POST /api/v1/orders, one item of a product
--                                     in FIRST..LAST, a fresh Idempotency-Key
--                                     per request, as the API client whose token
--                                     is in FF_BENCH_TOKEN (a secret stays off
--                                     the command line)
-- done() prints one line, "WRKJSON {...}", that bench/run.py reads. Every
-- answer but a 2xx is an error: wrk counts >= 400 ("status"), this script the
-- 1xx and 3xx ("unexpected"), as a redirect measured as a success would
-- flatter a figure.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local mode, first, span, token, nonce
local counter = 0
unexpected = 0
local stride

function init(args)
  mode = args[1] or "get"
  stride = tonumber(args[2] or "1")
  first = tonumber(args[3] or "0")
  span = tonumber(args[4] or "0") - first + 1
  token = os.getenv("FF_BENCH_TOKEN")
  nonce = args[5]
end

function request()
  if mode == "get" then
    return wrk.request()
  end
  local id = first + ((tid + counter * stride) % span)
  counter = counter + 1
  if mode == "walk" then
    return wrk.format("GET", "/api/v1/products/" .. id)
  end
  local body = '{"items":[{"product_id":' .. id .. ',"quantity":1}]}'
  return wrk.format("POST", "/api/v1/orders", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
    ["Idempotency-Key"] = nonce .. "-" .. tid .. "-" .. counter,
  }, body)
end

function response(status)
  if status < 200 or (status > 299 and status < 400) then
    unexpected = unexpected + 1
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local others = 0
  for _, thread in ipairs(threads) do
    others = others + thread:get("unexpected")
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"unexpected":%d},"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,' ..
    '"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, others, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
