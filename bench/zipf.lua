-- wrk script for bench/zipf.py: GET /promotions/<id>, ids drawn from a Zipf distribution
-- (rank k with weight 1/k^s) over `distinct` ids spread evenly over a dataset of `rows`.
-- args: <rows> <distinct> <s> [<stride>]: rank k asks row (k-1)*stride (default
-- rows/distinct, so every rank maps to its own row). The id of dataset row i is bench.zipf.id_of(i) (same format).
-- Prints one JSON line with the figures at the end (as bench/lookups.lua).
local cum, n, stride, total = {}, 0, 1, 0

function init(args)
  local rows = tonumber(args[1])
  n = tonumber(args[2])
  local s = tonumber(args[3])
  stride = tonumber(args[4]) or math.floor(rows / n)
  for k = 1, n do
    total = total + 1 / k ^ s
    cum[k] = total
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

local function id_of(i)
  return string.format("%08x-5f1c-4e2a-%04x-%08x%04x",
    i, i % 65536, (i * 104729) % 2147483648, (i * 7919) % 65536)
end

function request()
  local u = math.random() * total
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cum[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/promotions/" .. id_of((lo - 1) * stride))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"socket_errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
