-- wrk script for benches/compare.py.
-- Sets the request method and body from the environment and prints one line
-- of JSON, prefixed with WRK_JSON, when the run ends. Latencies are in
-- microseconds, as wrk records them.
--   WRK_METHOD        request method (default GET)
--   WRK_BODY_FILE     file whose bytes are sent as the body (optional)
--   WRK_CONTENT_TYPE  content-type of that body (default application/octet-stream)

wrk.method = os.getenv("WRK_METHOD") or "GET"

local body_file = os.getenv("WRK_BODY_FILE")
if body_file and body_file ~= "" then
  local file = assert(io.open(body_file, "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/octet-stream"
end

function done(summary, latency, requests)
  local errors = summary.errors
  local fields = {
    string.format('"requests": %d', summary.requests),
    string.format('"duration_us": %d', summary.duration),
    string.format('"bytes": %d', summary.bytes),
    string.format('"latency_mean_us": %.2f', latency.mean),
    string.format('"latency_max_us": %d', latency.max),
    string.format('"p50_us": %d', latency:percentile(50)),
    string.format('"p90_us": %d', latency:percentile(90)),
    string.format('"p99_us": %d', latency:percentile(99)),
    string.format('"p999_us": %d', latency:percentile(99.9)),
    string.format('"errors_connect": %d', errors.connect),
    string.format('"errors_read": %d', errors.read),
    string.format('"errors_write": %d', errors.write),
    string.format('"errors_status": %d', errors.status),
    string.format('"errors_timeout": %d', errors.timeout),
  }
  io.write("WRK_JSON {" .. table.concat(fields, ", ") .. "}\n")
end
