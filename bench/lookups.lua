-- wrk script for bench/lookups.py: GET /promotions/<id> over ids read from a file.
-- args: <ids file> <random|sequential>; prints one JSON line with the figures at the end.
local ids, mode, counter = {}, "random", 0

function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  mode = args[2] or "random"
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  counter = math.random(#ids)
end

function request()
  local id
  if mode == "sequential" then
    counter = counter % #ids + 1
    id = ids[counter]
  else
    id = ids[math.random(#ids)]
  end
  return wrk.format("GET", "/promotions/" .. id)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"socket_errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
