--
-- gatez: the response path of Gatez LLM routes under APISIX.
--
-- APISIX's ext-plugin protocol has no streaming body hook: a runner that asks for the response
-- body under ext-plugin-post-resp gets it whole, after the stream ended, and that plugin makes
-- the upstream call with lua-resty-http without SNI or a host-name check. So this plugin makes
-- the provider call itself, as APISIX's own ai-proxy does (bypass_nginx_upstream, then
-- before_proxy), and streams the answer to the client with ngx.print + ngx.flush, passing the
-- provider's status, headers and every chunk through the Gatez runner on the runner's unix
-- socket (what the runner returns is what the client gets). The frames are described in
-- extproc/apisix/plugin_wire.py.
--
-- The route's ext-plugin-pre-req (the runner) has already authenticated, rate-limited and
-- routed the request; its Rewrite names the flow in the x-gatez-flow header. The provider
-- request itself (target, headers with the provider's credential, body) is asked for here, so
-- a route without this plugin never sends the credential anywhere. Requests without the header
-- (REST routes) are left to APISIX's own proxying.
--
-- Load it with `apisix.extra_lua_path: "<gatez checkout>/?.lua"` and list `gatez` in plugins.
--
local core   = require("apisix.core")
local helper = require("apisix.plugins.ext-plugin.helper")
local http   = require("resty.http")
local cjson  = require("cjson.safe")
local bit    = require("bit")

local ngx        = ngx
local str_byte   = string.byte
local str_char   = string.char
local str_sub    = string.sub
local str_find   = string.find
local str_lower  = string.lower
local tbl_concat = table.concat
local tostring   = tostring
local tonumber   = tonumber
local type       = type
local ipairs     = ipairs
local pairs      = pairs
local band       = bit.band
local rshift     = bit.rshift
local lshift     = bit.lshift
local bor        = bit.bor

local UPSTREAM_REQUEST = 64
local RESPONSE_START   = 65
local RESPONSE_CHUNK   = 66
local RESPONSE_END     = 67
local FLOW_HEADER      = "x-gatez-flow"
-- A frame carries at most 2^24 - 1 bytes; a buffered body must leave room for its meta.
local MAX_PAYLOAD      = 16777215
local META_ROOM        = 65536
-- Provider calls one request may make: its fallback chain's targets, at most.
local MAX_ATTEMPTS     = 8

local schema = {
    type = "object",
    properties = {
        -- How long a runner answer may take (the runner answers at once unless a stage waits).
        runner_timeout_ms = {type = "integer", minimum = 1, default = 60000},
        -- A provider answer whose body is read whole (a plain JSON response) is refused above
        -- this size, as behind Envoy (its buffer limit).
        max_buffered_bytes = {type = "integer", minimum = 1,
                              maximum = MAX_PAYLOAD - META_ROOM,
                              default = MAX_PAYLOAD - META_ROOM},
        -- Provider connections kept for reuse.
        keepalive_timeout_ms = {type = "integer", minimum = 1000, default = 60000},
        keepalive_pool = {type = "integer", minimum = 1, default = 64},
    },
}

local _M = {
    version = 0.1,
    -- Just above ext-plugin-pre-req (12000), so the rewrite phase below runs before the runner
    -- is asked; in the access phase the runner's rewrite phase is over anyway.
    priority = 12005,
    name = "gatez",
    schema = schema,
}


function _M.check_schema(conf)
    return core.schema.check(schema, conf)
end


-- The error body clients get when the runner cannot be asked: OpenAI-style, like Gatez's own.
local function gateway_error(status, message, code)
    core.response.set_header("content-type", "application/json")
    return status, cjson.encode({error = {message = message, type = "service_unavailable",
                                          param = cjson.null, code = code}})
end


-- The runner's socket: one connection per request, from APISIX's keepalive pool.
local function runner_connect(conf)
    local sock = ngx.socket.tcp()
    sock:settimeouts(1000, conf.runner_timeout_ms, conf.runner_timeout_ms)
    local ok, err = sock:connect(helper.get_path())
    if not ok then
        return nil, err
    end
    return sock
end


local function frame(rpc, meta, data)
    local encoded = cjson.encode(meta)
    local meta_len = #encoded
    data = data or ""
    local len = 4 + meta_len + #data
    if len > MAX_PAYLOAD then
        return nil, "frame too large"
    end
    return {
        str_char(rpc, band(rshift(len, 16), 0xff), band(rshift(len, 8), 0xff), band(len, 0xff)),
        str_char(band(rshift(meta_len, 24), 0xff), band(rshift(meta_len, 16), 0xff),
                 band(rshift(meta_len, 8), 0xff), band(meta_len, 0xff)),
        encoded,
        data,
    }
end


-- Sends one frame and reads the runner's answer: its meta table and data.
local function ask(sock, rpc, meta, data)
    local parts, err = frame(rpc, meta, data)
    if not parts then
        return nil, nil, err
    end
    local ok
    ok, err = sock:send(parts)
    if not ok then
        return nil, nil, "send: " .. err
    end
    local head
    head, err = sock:receive(4)
    if not head then
        return nil, nil, "receive: " .. err
    end
    local ty, b1, b2, b3 = str_byte(head, 1, 4)
    if ty ~= rpc then
        return nil, nil, "unexpected answer type " .. ty
    end
    local len = bor(lshift(b1, 16), lshift(b2, 8), b3)
    local payload = ""
    if len > 0 then
        payload, err = sock:receive(len)
        if not payload then
            return nil, nil, "receive: " .. err
        end
    end
    if len < 4 then
        return nil, nil, "short answer"
    end
    local m1, m2, m3, m4 = str_byte(payload, 1, 4)
    local meta_len = bor(lshift(m1, 24), lshift(m2, 16), lshift(m3, 8), m4)
    if 4 + meta_len > len then
        return nil, nil, "answer meta runs past its frame"
    end
    local answer = cjson.decode(str_sub(payload, 5, 4 + meta_len))
    if type(answer) ~= "table" then
        return nil, nil, "answer meta is not an object"
    end
    return answer, str_sub(payload, 5 + meta_len)
end


local HOP_BY_HOP = {
    ["connection"] = true, ["keep-alive"] = true, ["proxy-connection"] = true,
    ["transfer-encoding"] = true, ["te"] = true, ["trailer"] = true, ["upgrade"] = true,
    ["content-length"] = true,
}


-- The client's response headers, as the runner listed them (repeats kept).
local function set_response_headers(list)
    local grouped = {}
    for _, entry in ipairs(list) do
        local name = str_lower(entry[1])
        if not HOP_BY_HOP[name] then
            local values = grouped[name]
            if values then
                values[#values + 1] = entry[2]
            else
                grouped[name] = {entry[2]}
            end
        end
    end
    for name, values in pairs(grouped) do
        ngx.header[name] = #values == 1 and values[1] or values
    end
end


local function provider_headers(res)
    local list = {}
    for name, value in pairs(res.headers) do
        if type(value) == "table" then
            for _, v in ipairs(value) do
                list[#list + 1] = {str_lower(name), tostring(v)}
            end
        else
            list[#list + 1] = {str_lower(name), tostring(value)}
        end
    end
    return list
end


-- Why a provider call failed, in the runner's words (connect, tls, timeout, send, read).
local function failure_reason(stage, err)
    err = tostring(err)
    if err == "timeout" or err:find("timed out", 1, true) then
        return "timeout"
    end
    if stage == "connect" and (err:find("handshake", 1, true) or err:find("certificate", 1, true)
                               or err:find("SSL", 1, true)) then
        return "tls"
    end
    return stage
end


-- Reads the provider's body as it arrives: chunked bodies chunk by chunk (lua-resty-http),
-- bodies delimited by the connection's end with receiveany (its own reader would wait for
-- 64 KiB before yielding anything).
local function body_reader(httpc, res)
    if not res.has_body or not res.body_reader then
        -- HEAD, 204, 304: nothing to read.
        return function() return nil end
    end
    local headers = res.headers
    if headers["Transfer-Encoding"] or headers["Content-Length"] then
        return res.body_reader
    end
    local sock = httpc.sock
    return function()
        local data, err = sock:receiveany(65536)
        if not data then
            if err == "closed" then
                return nil
            end
            return nil, err
        end
        return data
    end
end


local function plain_answer(conf, res)
    if not res.has_body then
        return false
    end
    local length = tonumber(res.headers["Content-Length"])
    if not length or length > conf.max_buffered_bytes then
        return false
    end
    local content_type = res.headers["Content-Type"]
    return not (type(content_type) == "string"
                and content_type:find("text/event-stream", 1, true))
end


local function connect_provider(conf, ctx, target)
    local timeout = ctx.matched_route and ctx.matched_route.value.timeout
    local httpc = http.new()
    httpc:set_timeouts(
        (timeout and timeout.connect or 60) * 1000,
        (timeout and timeout.send or 600) * 1000,
        (timeout and timeout.read or 600) * 1000)
    local addr = target.host
    if not core.utils.parse_ipv4(addr) and not core.utils.parse_ipv6(addr) then
        local resolved, err = core.resolver.parse_domain(addr)
        if not resolved then
            return nil, "resolve", err
        end
        addr = resolved
    end
    local tls = target.scheme == "https"
    local ok, err = httpc:connect({
        scheme = target.scheme,
        host = addr,
        port = target.port,
        -- SNI, and the name the certificate must carry: verified against the trusted CAs
        -- (apisix.ssl.ssl_trusted_certificate), never skipped.
        ssl_server_name = tls and target.server_name or nil,
        ssl_verify = tls,
        pool = tls and (target.server_name .. ":" .. addr .. ":" .. target.port) or nil,
        pool_size = conf.keepalive_pool,
    })
    if not ok then
        return nil, failure_reason("connect", err), err
    end
    return httpc
end


-- APISIX's own refusals carry no body (ext-plugin-pre-req's 503 while the runner restarts):
-- the client gets JSON like every other Gatez error instead of nginx's HTML page.
local function json_refusal(code, body, headers)
    if code and code >= 400 and (body == nil or body == "") then
        headers["content-type"] = "application/json"
        local message = code == 503 and "the gateway is not ready, retry"
                        or "the gateway could not serve the request"
        body = cjson.encode({error = {message = message, type = "service_unavailable",
                                      param = cjson.null, code = "gateway_" .. code}})
    end
    return code, body, headers
end


function _M.rewrite(conf, ctx)
    core.response.exit_insert_callback(json_refusal)
end


function _M.access(conf, ctx)
    local key = core.request.header(ctx, FLOW_HEADER)
    if not key then
        return
    end
    ctx.gatez_flow = key
    -- This plugin answers the request; nginx's proxy is not used.
    ctx.bypass_nginx_upstream = true
end


-- Tells the runner how the exchange ended (when it ended early), then frees the connection.
local function finish(sock, key, reason)
    if reason then
        local _, _, err = ask(sock, RESPONSE_END, {flow = key, error = reason})
        if err then
            core.log.warn("gatez: could not report the end of flow ", key, ": ", err)
            sock:close()
            return
        end
    end
    sock:setkeepalive(180 * 1000, 32)
end


-- Passes the provider's body on as the plan says; true when it all reached the client, and then
-- whether the provider's body was read to its end (its connection can be reused).
local function stream(conf, sock, key, read, plan)
    local eos, drained = false, false
    while not eos do
        local chunk, err = read()
        if err then
            core.log.warn("gatez: the provider's stream broke: ", err)
            finish(sock, key, "upstream_read_failed")
            return false
        end
        eos = chunk == nil
        drained = eos
        local out = chunk
        if plan == "streamed" then
            local answer, data, ask_err = ask(sock, RESPONSE_CHUNK, {flow = key, eos = eos},
                                              chunk or "")
            if not answer or answer.error then
                core.log.error("gatez: the runner refused a chunk of flow ", key, ": ",
                               ask_err or answer.error)
                sock:close()
                return false
            end
            out = data
            if answer.body == "replace" then
                eos = true
            end
        end
        if out and #out > 0 then
            local ok, print_err = ngx.print(out)
            if ok then
                ok, print_err = ngx.flush(true)
            end
            if not ok then
                core.log.info("gatez: the client went away: ", print_err)
                -- A streamed flow the runner saw end needs no word; any other does.
                finish(sock, key, not (eos and plan == "streamed") and "client_closed" or nil)
                return false
            end
        end
    end
    finish(sock, key, plan == "none" and "" or nil)
    return true, drained
end


-- Calls the provider as the runner's `target` says; returns the connection, the response,
-- its whole body when it is a plain answer of known length (read first, so the runner answers
-- once), and the RESPONSE_START meta (the status and headers, or why there was no answer).
local function call_provider(conf, ctx, key, target, body)
    local httpc, reason, detail = connect_provider(conf, ctx, target)
    local res
    if httpc then
        local headers = {}
        for _, entry in ipairs(target.headers) do
            local values = headers[entry[1]]
            if values then
                if type(values) ~= "table" then
                    values = {values}
                    headers[entry[1]] = values
                end
                values[#values + 1] = entry[2]
            else
                headers[entry[1]] = entry[2]
            end
        end
        -- lua-resty-http refuses a '?' in `path`: the query (Gemini's ?alt=sse, Azure's
        -- ?api-version=) goes apart.
        local path, query = target.path, nil
        local mark = str_find(path, "?", 1, true)
        if mark then
            path, query = str_sub(path, 1, mark - 1), str_sub(path, mark + 1)
        end
        res, detail = httpc:request({
            method = target.method,
            path = path,
            query = query,
            headers = headers,
            body = body,
            -- Exactly the headers Gatez chose: no user-agent of lua-resty-http's own.
            use_default_user_agent = false,
        })
        if not res then
            reason = failure_reason("send", detail)
            httpc:close()
        end
    end

    local start
    -- A plain answer of known length is read whole first and sent with its headers, so the
    -- runner answers once (a stream goes chunk by chunk).
    local whole
    if res then
        start = {flow = key, status = res.status, headers = provider_headers(res)}
        if plain_answer(conf, res) then
            whole, detail = res:read_body()
            if whole then
                start.eos = true
            else
                reason = failure_reason("read", detail)
                httpc:close()
                httpc, res = nil, nil
            end
        end
    end
    if not res then
        core.log.warn("gatez: provider call failed (", reason, "): ", detail)
        start = {flow = key, error = reason}
    end
    return httpc, res, whole, start
end


function _M.before_proxy(conf, ctx)
    local key = ctx.gatez_flow
    if not key then
        return
    end

    local sock, err = runner_connect(conf)
    if not sock then
        core.log.error("gatez: cannot reach the runner: ", err)
        return gateway_error(503, "the gateway is restarting, retry", "runner_unavailable")
    end
    local target, body
    target, body, err = ask(sock, UPSTREAM_REQUEST, {flow = key})
    if not target or target.error then
        core.log.warn("gatez: no provider request for flow ", key, ": ", err or target.error)
        sock:close()
        return gateway_error(503, "the gateway is restarting, retry", "runner_unavailable")
    end

    local httpc, res, whole, start, plan, data
    for attempt = 1, MAX_ATTEMPTS do
        httpc, res, whole, start = call_provider(conf, ctx, key, target, body)
        plan, data, err = ask(sock, RESPONSE_START, start, whole)
        if not plan or plan.error or plan.body ~= "retry" then
            break
        end
        -- The provider failed before its body, and the alias's chain has another target:
        -- the runner has routed the request to it (translated for it, with its credential).
        if httpc then
            httpc:close()
        end
        if attempt == MAX_ATTEMPTS then
            plan = {error = "too many fallback attempts"}
            break
        end
        target, body = plan.target, data
    end
    if not plan or plan.error then
        core.log.error("gatez: the runner did not take the response of flow ", key, ": ",
                       err or plan.error)
        sock:close()
        if httpc then
            httpc:close()
        end
        return gateway_error(502, "the gateway could not process the upstream response",
                             "runner_failed")
    end

    if plan.body == "replace" then
        if httpc then
            httpc:close()
        end
        sock:setkeepalive(180 * 1000, 32)
        set_response_headers(plan.headers or {})
        return plan.status, data
    end

    if whole then
        -- The runner's answer is final: its body ("buffered"), or the provider's ("none").
        httpc:set_keepalive(conf.keepalive_timeout_ms, conf.keepalive_pool)
        sock:setkeepalive(180 * 1000, 32)
        local out = plan.body == "none" and whole or data
        ngx.status = plan.status
        set_response_headers(plan.headers)
        ngx.header["content-length"] = #out
        ngx.print(out)
        return ngx.exit(ngx.HTTP_OK)
    end

    local read = body_reader(httpc, res)
    if plan.body == "buffered" then
        local parts, size = {}, 0
        while true do
            local chunk, read_err = read()
            if read_err then
                finish(sock, key, "upstream_read_failed")
                httpc:close()
                return gateway_error(502, "the upstream's answer broke off", "upstream_read")
            end
            if not chunk then
                break
            end
            size = size + #chunk
            if size > conf.max_buffered_bytes then
                finish(sock, key, "upstream_response_too_large")
                httpc:close()
                return gateway_error(502, "the upstream's answer is too large", "upstream_size")
            end
            parts[#parts + 1] = chunk
        end
        httpc:set_keepalive(conf.keepalive_timeout_ms, conf.keepalive_pool)
        local answer
        answer, data, err = ask(sock, RESPONSE_CHUNK, {flow = key, eos = true},
                                tbl_concat(parts))
        if not answer or answer.error then
            core.log.error("gatez: the runner refused the body of flow ", key, ": ",
                           err or answer.error)
            sock:close()
            return gateway_error(502, "the gateway could not process the upstream response",
                                 "runner_failed")
        end
        sock:setkeepalive(180 * 1000, 32)
        if answer.body == "replace" then
            set_response_headers(answer.headers or {})
            return answer.status, data
        end
        ngx.status = plan.status
        set_response_headers(plan.headers)
        ngx.header["content-length"] = #data
        ngx.print(data)
        return ngx.exit(ngx.HTTP_OK)
    end

    ngx.status = plan.status
    set_response_headers(plan.headers)
    local sent, drained = stream(conf, sock, key, read, plan.body)
    if sent then
        if drained then
            httpc:set_keepalive(conf.keepalive_timeout_ms, conf.keepalive_pool)
        else
            httpc:close()  -- the runner ended the stream early: the rest is never read
        end
        -- Headers and body are out: end the request here (200 only finalizes it).
        return ngx.exit(ngx.HTTP_OK)
    end
    httpc:close()
    if not ngx.headers_sent then
        return gateway_error(502, "the upstream's answer broke off", "upstream_read")
    end
    -- Cut short: close the client's connection too, so it sees a broken stream, not an end.
    return ngx.exit(ngx.ERROR)
end


return _M
