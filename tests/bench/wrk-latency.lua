-- wrk script for tests/bench/api.sh: the latency and status of every request.
-- Each request carries an X-Request-Id of its own, which the server echoes
-- (Loom's API does; api.sh's nginx is told to), so that an answer is matched to
-- its request though wrk's callbacks do not say which connection they are about.
-- done() writes one line to $BENCH_LAT_OUT:
--   ok=N secs=S p50_ms=X p99_ms=Y bad=STATUS:COUNT,... unmatched=U errors=C/R/W/T
-- p50 and p99 are over the 2xx answers only (nearest rank); bad counts every
-- other status; errors are wrk's connect/read/write/timeout counts.
-- BENCH_LAT_BODY=create makes every request a POST that creates an app of a new name.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
	ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
	return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local threads = {}
function setup(thread)
	table.insert(threads, thread)
	thread:set("tid", #threads)
end

local create = os.getenv("BENCH_LAT_BODY") == "create"
local counter = 0
local started = {}
ok_us = {}
bad = {}
unmatched = 0

function request()
	counter = counter + 1
	local id = string.format("b%d-%d", tid, counter)
	wrk.headers["X-Request-Id"] = id
	local body = nil
	if create then
		body = string.format('{"name":"c%d-%d","image_reference":"127.0.0.1:1/sim:1",' ..
			'"image_port":8080,"scale_cpu_limit":"0.125","scale_memory_limit":"256M"}', tid, counter)
	end
	started[id] = now_us()
	return wrk.format(create and "POST" or nil, nil, nil, body)
end

function response(status, headers, body)
	local id = headers["X-Request-Id"] or headers["x-request-id"]
	local t0 = id and started[id]
	if not t0 then
		unmatched = unmatched + 1
		return
	end
	started[id] = nil
	if status >= 200 and status < 300 then
		ok_us[#ok_us + 1] = now_us() - t0
	else
		bad[status] = (bad[status] or 0) + 1
	end
end

function done(summary, latency, requests)
	local all, badall, nomatch = {}, {}, 0
	for _, t in ipairs(threads) do
		for _, v in ipairs(t:get("ok_us")) do all[#all + 1] = v end
		for k, v in pairs(t:get("bad")) do badall[k] = (badall[k] or 0) + v end
		nomatch = nomatch + t:get("unmatched")
	end
	table.sort(all)
	local function pct(p)
		if #all == 0 then return "-" end
		local i = math.ceil(p / 100 * #all)
		if i < 1 then i = 1 end
		return string.format("%.2f", all[i] / 1000)
	end
	local b = {}
	for k, v in pairs(badall) do b[#b + 1] = k .. ":" .. v end
	table.sort(b)
	local e = summary.errors
	local f = assert(io.open(os.getenv("BENCH_LAT_OUT"), "w"))
	f:write(string.format("ok=%d secs=%.3f p50_ms=%s p99_ms=%s bad=%s unmatched=%d errors=%d/%d/%d/%d\n",
		#all, summary.duration / 1e6, pct(50), pct(99), #b > 0 and table.concat(b, ",") or "-",
		nomatch, e.connect, e.read, e.write, e.timeout))
	f:close()
end
