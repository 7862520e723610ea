-- wrk script for bench/sync_load.py's poll phase: one manifest by tag, as fast as the node
-- answers, with the credentials a registry client sends.
--   POLL_METHOD         GET (default) or HEAD; wrk 4.1 cannot time HEAD (see bench/README.md)
--   POLL_AUTHORIZATION  the whole Authorization header value: "Bearer <token>" or "Basic <b64>"
-- done() prints one JSON line the bench parses: requests, seconds, non-2xx answers, socket errors.

wrk.method = os.getenv("POLL_METHOD") or "GET"
wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json"
local authorization = os.getenv("POLL_AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "non_2xx": %d, "errors": %d, "p50_ms": %.2f, "p99_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
