-- wrk script for `make bench` (scripts/bench.sh, scripts/bench/run.mjs).
--
--   wrk ... -s wallet.lua URL -- MODE ORGS_FILE RUN_ID [ARG]
--
-- ORGS_FILE has one "org token" pair per line (service tokens); RUN_ID keeps
-- idempotency keys unique across runs on the same organization. MODE:
--   floor         POST /bench/floor/{org}: Worker -> Durable Object, no work
--   debit         POST /v1/orgs/{org}/debits, connections spread over every org
--                 of ORGS_FILE in turn (one line = one organization)
--   priced        the same debits priced from usage instead of an amount (one
--                 gpt-4o-mini input token: 0.000015, rounded up to 0.0001)
--   hold_capture  a hold, then its capture, per thread; counts captures
--   batch         POST /v1/orgs/{org}/debits/batch with ARG debits per request
--   wallet        GET /v1/orgs/{org}/wallet
--   usage         GET /v1/orgs/{org}/usage?{ARG}
--
-- done() prints one line "BENCH_JSON {...}" that run.mjs parses.

local FEATURES = { "chat", "auto_triage", "error_analysis", "incident_timeline", "release_analysis", "nl_alerts" }
local AMOUNT = "0.0001" -- tiny, so a long run never exhausts the trial credits

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
local mode, run_id, arg
local orgs = {}
local counter = 0
local next_org = 0
local holds = {}   -- ids of holds placed by this thread and not yet captured
-- Globals, not locals: done() reads them from each thread with thread:get().
ok_items = 0  -- successful captures (hold_capture) or batch items (batch)
bad_items = 0

function init(args)
  mode, run_id, arg = args[1], args[3], args[4]
  for line in io.lines(args[2]) do
    local org, token = line:match("^(%S+)%s+(%S+)$")
    if org then
      orgs[#orgs + 1] = { org = org, auth = "Bearer " .. token }
    end
  end
  assert(#orgs > 0, "no organizations in " .. args[2])
  -- Threads start half the list apart (run.mjs runs two), so with many
  -- organizations none waits a whole round for its first request.
  next_org = ((tid - 1) * math.floor(#orgs / 2)) % #orgs
end

local function pick_org()
  next_org = next_org % #orgs + 1
  return orgs[next_org]
end

local function key()
  counter = counter + 1
  return run_id .. "-" .. tid .. "-" .. counter
end

local function post(path, o, body, idem)
  local headers = { ["Authorization"] = o.auth, ["Content-Type"] = "application/json" }
  if idem then
    headers["Idempotency-Key"] = idem
  end
  return wrk.format("POST", path, headers, body)
end

local function debit_body(n)
  return '{"feature":"' .. FEATURES[n % #FEATURES + 1] .. '","amount":"' .. AMOUNT ..
      '","user_id":"user_' .. (n % 20 + 1) .. '"}'
end

-- The same debit priced by the rate card: one input token of gpt-4o-mini
-- costs 0.0001 after rounding up, as AMOUNT does.
local function priced_body(n)
  return '{"feature":"' .. FEATURES[n % #FEATURES + 1] ..
      '","usage":{"model":"gpt-4o-mini","input_tokens":1,"output_tokens":0},"user_id":"user_' .. (n % 20 + 1) .. '"}'
end

function request()
  if mode == "floor" then
    return wrk.format("POST", "/bench/floor/" .. orgs[1].org, {}, "")
  elseif mode == "debit" then
    local o = pick_org()
    local k = key()
    return post("/v1/orgs/" .. o.org .. "/debits", o, debit_body(counter), k)
  elseif mode == "priced" then
    local o = pick_org()
    local k = key()
    return post("/v1/orgs/" .. o.org .. "/debits", o, priced_body(counter), k)
  elseif mode == "hold_capture" then
    local o = orgs[1]
    local id = table.remove(holds)
    if id then
      return post("/v1/orgs/" .. o.org .. "/holds/" .. id .. "/capture", o, '{"amount":"' .. AMOUNT .. '"}')
    end
    local k = key()
    return post("/v1/orgs/" .. o.org .. "/holds", o, '{"feature":"chat","amount":"' .. AMOUNT .. '"}', k)
  elseif mode == "batch" then
    local o = orgs[1]
    local items = {}
    for i = 1, tonumber(arg) do
      local k = key()
      items[i] = '{"idempotency_key":"' .. k .. '","feature":"' .. FEATURES[counter % #FEATURES + 1] ..
          '","amount":"' .. AMOUNT .. '"}'
    end
    return post("/v1/orgs/" .. o.org .. "/debits/batch", o, '{"debits":[' .. table.concat(items, ",") .. "]}")
  elseif mode == "wallet" then
    local o = orgs[1]
    return wrk.format("GET", "/v1/orgs/" .. o.org .. "/wallet", { ["Authorization"] = o.auth })
  elseif mode == "usage" then
    local o = orgs[1]
    return wrk.format("GET", "/v1/orgs/" .. o.org .. "/usage?" .. arg, { ["Authorization"] = o.auth })
  end
  error("unknown mode " .. tostring(mode))
end

-- Only the modes that need the body define a response callback: without one,
-- wrk does not hand bodies to Lua at all. wrk decides from the script as
-- loaded, before init() sees the arguments, hence the environment variable.
local function count(haystack, needle)
  local n, from = 0, 1
  while true do
    local at = haystack:find(needle, from, true)
    if not at then
      return n
    end
    n, from = n + 1, at + #needle
  end
end

local function on_hold_capture(status, _, body)
  if status == 201 then
    local id = body:match('"id":"(hold_%d+)"')
    if id then
      holds[#holds + 1] = id
    end
  elseif status == 200 and body:find('"status":"captured"', 1, true) then
    ok_items = ok_items + 1
  end
end

local function on_batch(status, _, body)
  if status == 200 then
    local ok = count(body, '"status":201')
    ok_items = ok_items + ok
    bad_items = bad_items + tonumber(arg) - ok
  end
end

response = nil
if os.getenv("BENCH_MODE") == "hold_capture" then
  response = on_hold_capture
elseif os.getenv("BENCH_MODE") == "batch" then
  response = on_batch
end

function done(summary, latency, requests)
  local items, bad = 0, 0
  for _, t in ipairs(threads) do
    items = items + (t:get("ok_items") or 0)
    bad = bad + (t:get("bad_items") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"ok_items":%d,"bad_items":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, items, bad))
end
