-- wrk script: cycle through a list of request targets, one per line in a file.
--
--   wrk -t2 -c64 -d10s -s loadtest/wrk_paths.lua http://127.0.0.1:9900 -- paths.txt 2 [METHOD]
--
-- A line is "PATH" or "PATH<TAB>RANGE" (RANGE is sent as the Range header, e.g.
-- "bytes=0-8388607"), optionally followed by more "<TAB>Name: value" fields, each sent as
-- a header (pre-signed SigV4 headers; RANGE may then be empty). PATH may carry a query
-- string (presigned URLs). METHOD (default GET) is the method of every request, e.g. HEAD. Requests are
-- formatted once in init(); each thread starts at its own offset (thread n of T starts at
-- n/T of the list) and wraps around. done() prints one machine-readable line:
--   WRK_RESULT {...json...}
-- with latency percentiles in microseconds and wrk's error counters ("status" counts
-- responses with a status above 399).

local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

local reqs = {}
local n = 0
local i = 0

function init(args)
  local file = args[1]
  local nthreads = tonumber(args[2] or "1")
  local method = args[3] or "GET"
  for line in io.lines(file) do
    local path, rest = line:match("^([^\t]+)\t?(.*)$")
    if path ~= nil then
      local headers = {}
      for k, v in pairs(wrk.headers) do
        headers[k] = v
      end
      local range, extra = rest:match("^([^\t]*)\t?(.*)$")
      if range ~= nil and range ~= "" then
        headers["Range"] = range
      end
      for field in (extra or ""):gmatch("[^\t]+") do
        local name, value = field:match("^([^:]+):%s*(.*)$")
        if name == nil then
          error("bad header field '" .. field .. "' in " .. tostring(file))
        end
        headers[name] = value
      end
      n = n + 1
      reqs[n] = wrk.format(method, path, headers)
    end
  end
  if n == 0 then
    error("no request targets in " .. tostring(file))
  end
  i = math.floor(n * (thread_id or 0) / nthreads)
end

function request()
  i = i + 1
  if i > n then
    i = 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, '
      .. '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, '
      .. '"p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
