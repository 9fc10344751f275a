#!/usr/bin/env python3
"""Load driver, sampler and report of bench/soak.sh. Standard library only (plus the curl
binary for the HTTP/2 requests).

    python3 bench/soak_client.py run DIR/soak.json    # drive traffic for the configured time
    python3 bench/soak_client.py report DIR           # markdown report on stdout; exit 0 PASS, 1 FAIL

`run` starts worker threads that each keep one plain and one TLS keep-alive connection to the
gateway and pick, per request, one of the features below (weighted), paced to `rate` req/s in
all. Every request is checked (status, and the body where that is cheap: the upstream echoes a
per-request token, a hash of the POST body, the aggregation's composed document, the streamed
bytes) and recorded in DIR/requests.tsv: start time, feature, status, latency, outcome (ok,
expected, error), cause, the config variant the answer carried (x-soak-variant), request id and
a detail. Besides the workers: HTTP/2 over TLS and h2c batches through curl (--parallel, one
multiplexed connection per batch), a wrong password every 15 s (expected 401), and a scraper of
the admin API (/metrics, /status, /upstreams) every `sample_seconds`, which also samples the
gateway's RSS, open fds and threads from /proc and the p50/p99 of the interval into
DIR/samples.tsv.

`report` reads requests.tsv, samples.tsv, faults.tsv (written by soak.sh) and meta.json, decides
which errors the fault windows explain, and prints the tables and the verdict.
"""

import base64
import bisect
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# ------------------------------------------------------------------------- shared helpers


def stream_bytes(token, total):
    """What the backend sends for GET /stream/KIB (see soak_backend.py)."""
    unit = (token or "-").encode() + b"\n"
    reps = total // len(unit) + 1
    return (unit * reps)[:total]


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_hs256(secret, claims):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


class Result:
    __slots__ = ("status", "outcome", "cause", "variant", "rid", "info")

    def __init__(self, status=0, outcome="ok", cause="", variant="", rid="", info=""):
        self.status, self.outcome, self.cause = status, outcome, cause
        self.variant, self.rid, self.info = variant, rid, info


def error_code(body):
    try:
        j = json.loads(body)
        if isinstance(j, dict) and isinstance(j.get("error"), str):
            return j["error"]
    except (ValueError, UnicodeDecodeError):
        pass
    return "-"


def classify_exc(e, reused):
    if isinstance(e, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(e, http.client.RemoteDisconnected):
        return "closed_no_response" + (":reused_conn" if reused else ":fresh_conn")
    if isinstance(e, http.client.IncompleteRead):
        return "truncated_body"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ssl.SSLError):
        return "tls:" + (getattr(e, "reason", None) or type(e).__name__)
    if isinstance(e, ssl.CertificateError):
        return "tls:certificate"
    if isinstance(e, http.client.HTTPException):
        return "http_protocol:" + type(e).__name__
    if isinstance(e, OSError):
        import errno as _errno
        return "oserror:" + (_errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__)
    return "exception:" + type(e).__name__


# ------------------------------------------------------------------------- the driver


class Driver:
    def __init__(self, cfg):
        self.cfg = cfg
        self.dir = cfg["dir"]
        self.lock = threading.Lock()
        self.rows = []  # pending lines for requests.tsv
        self.interval_lat = []  # latencies (ms) of data-plane requests in this sample interval
        self.interval_n = 0
        self.interval_err = 0
        self.store_up = ""
        self.last_reload = ""
        self.stop_at = 0.0
        self.ctx = ssl.create_default_context(cafile=cfg["ca"])
        self.basic = "Basic " + base64.b64encode(
            f"{cfg['basic_user']}:{cfg['basic_pass']}".encode()).decode()
        self.wrong_basic = "Basic " + base64.b64encode(
            f"{cfg['basic_user']}:not-the-password".encode()).decode()
        self._jwt = ("", 0.0)
        self.seq = 0
        self.req_file = open(os.path.join(self.dir, "requests.tsv"), "w", buffering=1 << 16)
        self.req_file.write("t\tfeature\tstatus\tms\toutcome\tcause\tvariant\trid\tinfo\n")
        self.sample_file = open(os.path.join(self.dir, "samples.tsv"), "w", buffering=1)
        self.sample_file.write("t\trss_kib\tfds\tthreads\trequests\terrors\tp50_ms\tp99_ms\tstore_up\n")

    # ---- bookkeeping
    def token(self):
        with self.lock:
            self.seq += 1
            return f"t{self.seq}x{random.randrange(1 << 30):x}"

    def jwt(self):
        tok, exp = self._jwt
        now = time.time()
        if now > exp - 600:
            exp = now + 3600
            tok = jwt_hs256(self.cfg["jwt_secret"], {"sub": self.cfg["basic_user"], "exp": int(exp),
                                                      "iat": int(now)})
            self._jwt = (tok, exp)
        return tok

    def record(self, t0, feature, ms, r, dataplane=True):
        line = "\t".join([f"{t0:.3f}", feature, str(r.status), f"{ms:.2f}", r.outcome,
                          r.cause or "-", r.variant or "-", r.rid or "-",
                          (r.info or "-").replace("\t", " ")]) + "\n"
        with self.lock:
            self.rows.append(line)
            if dataplane:
                self.interval_n += 1
                if r.outcome == "error":
                    self.interval_err += 1
                if feature not in ("stream",) and not feature.startswith("h2"):
                    self.interval_lat.append(ms)

    def flush(self):
        with self.lock:
            rows, self.rows = self.rows, []
        if rows:
            self.req_file.write("".join(rows))
            self.req_file.flush()

    # ---- one HTTP/1.1 request on a worker's keep-alive connection
    def h1(self, w, kind, method, path, headers=None, body=None):
        """Returns (status, headers, body). Raises on transport errors (the connection is
        dropped so the next request opens a new one)."""
        conn = w.conns.get(kind)
        reused = conn is not None
        if conn is None:
            if kind == "tls":
                conn = http.client.HTTPSConnection("127.0.0.1", self.cfg["https_port"],
                                                   context=self.ctx, timeout=15)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.cfg["http_port"], timeout=15)
            w.conns[kind] = conn
            w.uses[kind] = 0
        try:
            if conn.sock is None:
                conn.connect()
                if kind == "tls":
                    w.new_tls_gen = cert_gen(conn.sock)
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
        except Exception as e:
            conn.close()
            w.conns.pop(kind, None)
            e.soak_reused = reused and w.uses.get(kind, 0) > 0
            raise
        w.uses[kind] = w.uses.get(kind, 0) + 1
        if resp.will_close or (kind == "tls" and w.uses[kind] >= 100):
            conn.close()  # a new TLS handshake every 100 requests (sees rotated certificates)
            w.conns.pop(kind, None)
        return resp.status, resp, data

    def run_h1(self, w, feature, fn):
        t0 = time.time()
        p0 = time.perf_counter()
        w.new_tls_gen = None
        try:
            r = fn(w)
        except Exception as e:  # transport-level failure
            r = Result(0, "error", classify_exc(e, getattr(e, "soak_reused", False)))
        ms = (time.perf_counter() - p0) * 1000
        if w.new_tls_gen is not None:
            r.info = (r.info + " " if r.info and r.info != "-" else "") + f"newconn gen={w.new_tls_gen}"
        self.record(t0, feature, ms, r)

    # ---- checks shared by the echo features
    def check_echo(self, status, resp, data, token, *, expect_path=None, proto="http",
                   consumer=None, service="users", body=None, method="GET"):
        v = resp.getheader("x-soak-variant") or ""
        rid = resp.getheader("x-request-id") or ""
        if status != 200:
            return Result(status, "error", f"http_{status}:{error_code(data)}", v, rid)
        try:
            j = json.loads(data)
        except ValueError:
            return Result(status, "error", "wrong_body:not_json", v, rid)
        bad = None
        if j.get("token") != token:
            bad = "token"
        elif j.get("service") != service:
            bad = "service"
        elif j.get("method") != method:
            bad = "method"
        elif expect_path is not None and j.get("path") != expect_path:
            bad = "path"
        elif j.get("proto") != proto:
            bad = "x_forwarded_proto"
        elif consumer is not None and j.get("consumer") != consumer:
            bad = "consumer"
        elif body is not None and (j.get("body_len") != len(body)
                                   or j.get("body_sha256") != hashlib.sha256(body).hexdigest()):
            bad = "body_hash"
        if bad:
            return Result(status, "error", "wrong_body:" + bad, v, rid, str(j.get("instance")))
        return Result(status, "ok", "", v, rid, str(j.get("instance")))

    # ---- the features (each returns a Result)
    def f_proxy_get(self, w):
        tok = self.token()
        path = f"/api/users/echo/get?t={tok}"
        st, resp, data = self.h1(w, "plain", "GET", path, {"x-soak-token": tok})
        return self.check_echo(st, resp, data, tok, expect_path=f"/echo/get?t={tok}")

    def f_proxy_post(self, w):
        tok = self.token()
        n = random.randint(1, len(w.blob))
        off = random.randint(0, len(w.blob) - n)
        body = w.blob[off:off + n]
        st, resp, data = self.h1(w, "plain", "POST", "/api/users/upload",
                                 {"x-soak-token": tok, "Content-Type": "application/octet-stream"},
                                 body)
        return self.check_echo(st, resp, data, tok, expect_path="/upload", body=body, method="POST")

    def f_https_get(self, w):
        tok = self.token()
        st, resp, data = self.h1(w, "tls", "GET", f"/api/users/echo/tls?t={tok}",
                                 {"x-soak-token": tok})
        return self.check_echo(st, resp, data, tok, expect_path=f"/echo/tls?t={tok}", proto="https")

    def f_https_newconn(self, w):
        tok = self.token()
        st, resp, data = self.h1(w, "tls", "GET", f"/api/users/echo/tlsnew?t={tok}",
                                 {"x-soak-token": tok, "Connection": "close"})
        return self.check_echo(st, resp, data, tok, expect_path=f"/echo/tlsnew?t={tok}",
                               proto="https")

    def f_auth_basic(self, w):
        tok = self.token()
        st, resp, data = self.h1(w, "plain", "GET", "/basic/x",
                                 {"x-soak-token": tok, "Authorization": self.basic})
        return self.check_echo(st, resp, data, tok, consumer=self.cfg["basic_user"])

    def f_auth_apikey(self, w):
        tok = self.token()
        st, resp, data = self.h1(w, "tls", "GET", "/key/x",
                                 {"x-soak-token": tok, "x-api-key": self.cfg["api_key"]})
        return self.check_echo(st, resp, data, tok, consumer=self.cfg["basic_user"], proto="https")

    def f_auth_jwt(self, w):
        tok = self.token()
        st, resp, data = self.h1(w, "plain", "GET", "/jwt/x",
                                 {"x-soak-token": tok, "Authorization": "Bearer " + self.jwt()})
        return self.check_echo(st, resp, data, tok, consumer=self.cfg["basic_user"])

    def f_auth_wrong(self, w):
        st, resp, data = self.h1(w, "plain", "GET", "/basic/x", {"Authorization": self.wrong_basic})
        v = resp.getheader("x-soak-variant") or ""
        rid = resp.getheader("x-request-id") or ""
        if st == 401 and resp.getheader("www-authenticate"):
            return Result(st, "expected", "expected_401", v, rid)
        return Result(st, "error", f"http_{st}:{error_code(data)}", v, rid)

    def f_ratelimit_calm(self, w):
        tok = self.token()
        st, resp, data = self.h1(w, "plain", "GET", "/limited/calm",
                                 {"x-soak-token": tok, "x-soak-tenant": f"calm-{random.randrange(200)}"})
        return self.check_echo(st, resp, data, tok, service="orders")

    def f_ratelimit_greedy(self, w):
        tok = self.token()
        st, resp, data = self.h1(w, "plain", "GET", "/limited/greedy",
                                 {"x-soak-token": tok, "x-soak-tenant": "greedy"})
        if st == 429 and error_code(data) == "rate_limited" and resp.getheader("retry-after"):
            return Result(st, "expected", "expected_429", resp.getheader("x-soak-variant") or "",
                          resp.getheader("x-request-id") or "")
        return self.check_echo(st, resp, data, tok, service="orders")

    def f_ratelimit_failclosed(self, w):
        tok = self.token()
        st, resp, data = self.h1(w, "plain", "GET", "/strict/x",
                                 {"x-soak-token": tok, "x-soak-tenant": f"calm-{random.randrange(200)}"})
        return self.check_echo(st, resp, data, tok, service="orders")

    def f_cache(self, w):
        key = f"k{random.randrange(50)}"
        st, resp, data = self.h1(w, "plain", "GET", f"/cached/{key}")
        v = resp.getheader("x-soak-variant") or ""
        rid = resp.getheader("x-request-id") or ""
        cs = resp.getheader("cache-status") or ""
        info = "cache=" + cache_result(cs)
        if st != 200:
            return Result(st, "error", f"http_{st}:{error_code(data)}", v, rid, info)
        try:
            j = json.loads(data)
        except ValueError:
            return Result(st, "error", "wrong_body:not_json", v, rid, info)
        if j.get("key") != key:
            return Result(st, "error", "wrong_body:cache_key", v, rid, info)
        return Result(st, "ok", "", v, rid, info)

    def f_aggregate(self, w):
        uid = str(random.randrange(1000))
        st, resp, data = self.h1(w, random.choice(("plain", "tls")), "GET", f"/dashboard/{uid}")
        return check_dashboard(st, resp.getheader, data, uid)

    def f_stream(self, w):
        tok = self.token()
        kib = random.choice((64, 256, 1024))
        st, resp, data = self.h1(w, "plain", "GET", f"/stream/{kib}", {"x-soak-token": tok})
        v = resp.getheader("x-soak-variant") or ""
        rid = resp.getheader("x-request-id") or ""
        if st != 200:
            return Result(st, "error", f"http_{st}:{error_code(data)}", v, rid)
        if len(data) != kib * 1024:
            return Result(st, "error", "wrong_body:stream_length", v, rid, f"{len(data)}/{kib * 1024}")
        if data != stream_bytes(tok, kib * 1024):
            return Result(st, "error", "wrong_body:stream_bytes", v, rid)
        return Result(st, "ok", "", v, rid, f"{kib}KiB")

    FEATURES = [
        ("proxy_get", 22, "f_proxy_get"),
        ("proxy_post", 8, "f_proxy_post"),
        ("https_get", 10, "f_https_get"),
        ("https_newconn", 2, "f_https_newconn"),
        ("auth_basic", 5, "f_auth_basic"),
        ("auth_apikey", 5, "f_auth_apikey"),
        ("auth_jwt", 5, "f_auth_jwt"),
        ("ratelimit_calm", 5, "f_ratelimit_calm"),
        ("ratelimit_greedy", 10, "f_ratelimit_greedy"),
        ("ratelimit_failclosed", 5, "f_ratelimit_failclosed"),
        ("cache", 10, "f_cache"),
        ("aggregate", 8, "f_aggregate"),
        ("stream", 2, "f_stream"),
    ]

    # ---- threads
    def worker(self, idx, n_workers):
        w = Worker()
        rnd = random.Random(idx * 7919 + int(time.time()))
        w.blob = rnd.randbytes(64 * 1024)
        names = [f[0] for f in self.FEATURES]
        weights = [f[1] for f in self.FEATURES]
        fns = [getattr(self, f[2]) for f in self.FEATURES]
        period = n_workers / float(self.cfg["rate"])
        nxt = time.time() + rnd.random() * period
        while True:
            now = time.time()
            if now >= self.stop_at:
                break
            if nxt > now:
                time.sleep(min(nxt - now, self.stop_at - now))
                continue
            i = rnd.choices(range(len(names)), weights)[0]
            self.run_h1(w, names[i], fns[i])
            nxt += period
            if time.time() - nxt > 1.0:  # fell behind (a slow request): do not burst to catch up
                nxt = time.time()
        for c in w.conns.values():
            c.close()

    def wrong_password_loop(self):
        # at most 4 a minute: 10 failures a minute would lock 127.0.0.1 out of password logins
        w = Worker()
        while sleep_until(self.stop_at, 15):
            self.run_h1(w, "auth_wrong", self.f_auth_wrong)
        for c in w.conns.values():
            c.close()

    def curl_batch(self, feature, h2c):
        """HTTP/2 requests through curl. Over TLS (ALPN h2): one curl process, 10 requests
        multiplexed on one connection (--parallel). h2c (prior knowledge): 4 curl processes of
        one request each, because curl 7.88 fails every request after the first on a reused
        prior-knowledge connection ("Error in the HTTP2 framing layer", against nginx too)."""
        n = 4 if h2c else 10
        base = (f"http://127.0.0.1:{self.cfg['http_port']}" if h2c
                else f"https://127.0.0.1:{self.cfg['https_port']}")
        reqs = []
        for _ in range(n):
            kind = random.choices(("echo", "dashboard", "cache"), (6, 2, 2))[0]
            if kind == "echo":
                tok = self.token()
                reqs.append((kind, tok, f"{base}/api/users/echo/h2?t={tok}"))
            elif kind == "dashboard":
                reqs.append((kind, "", f"{base}/dashboard/{random.randrange(1000)}"))
            else:
                reqs.append((kind, "", f"{base}/cached/k{random.randrange(50)}"))
        groups = [list(range(n))] if not h2c else [[i] for i in range(n)]
        for group in groups:
            self.curl_run(feature, h2c, [reqs[i] for i in group])

    def curl_run(self, feature, h2c, reqs):
        wfmt = ("%{urlnum}|%{http_code}|%{http_version}|%{time_total}|%{exitcode}|"
                "%header{x-soak-token}|%header{x-soak-variant}|%header{x-gatehouse-degraded}|"
                "%header{x-request-id}|%{size_download}|%{time_appconnect}|%{time_starttransfer}|"
                "%{num_connects}|%{errormsg}\\n")
        lines = []
        for kind, arg, url in reqs:
            lines.append(f'url = "{url}"')
            lines.append('output = "/dev/null"')
            lines.append("http2-prior-knowledge" if h2c else "http2")
            if not h2c:
                lines.append(f'cacert = "{self.cfg["ca"]}"')
            if kind == "echo":
                lines.append(f'header = "x-soak-token: {arg}"')
            lines.append('max-time = 15')
            lines.append(f'write-out = "{wfmt}"')
            lines.append("next")
        fd, path = tempfile.mkstemp(prefix="curl-", suffix=".cfg", dir=self.dir)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines[:-1]) + "\n")
        t0 = time.time()
        cmd = ["curl", "-sS", "--no-progress-meter"]
        if len(reqs) > 1:
            cmd += ["--parallel", "--parallel-max", str(len(reqs))]
        try:
            out = subprocess.run(cmd + ["-K", path], capture_output=True, text=True,
                                 timeout=30).stdout
        except subprocess.TimeoutExpired:
            out = ""
        finally:
            os.unlink(path)
        seen = set()
        for line in out.splitlines():
            parts = line.split("|", 13)
            if len(parts) < 14 or not parts[0].isdigit():
                continue
            num = int(parts[0])
            if num >= len(reqs) or num in seen:
                continue
            seen.add(num)
            kind, arg, _ = reqs[num]
            code = int(parts[1]) if parts[1].isdigit() else 0
            ver, secs, exitcode = parts[2], parts[3], parts[4]
            tokh, variant, degraded, rid, size, t_tls, t_first, nconn, errmsg = parts[5:14]
            try:
                ms = float(secs) * 1000
            except ValueError:
                ms = 0.0
            if exitcode not in ("0", ""):
                r = Result(0, "error", f"curl_{exitcode}:{curl_reason(errmsg)}", variant, rid)
            elif code != 200:
                r = Result(code, "error", f"http_{code}:-", variant, rid)
            elif ver != "2":
                r = Result(code, "error", f"wrong_protocol:http/{ver}", variant, rid)
            elif kind == "echo" and tokh != arg:
                r = Result(code, "error", "wrong_body:token", variant, rid)
            elif kind == "dashboard" and degraded:
                r = Result(code, "error", f"degraded:{degraded}", variant, rid)
            elif not size.isdigit() or int(size) == 0:
                r = Result(code, "error", "wrong_body:empty", variant, rid)
            else:
                r = Result(code, "ok", "", variant, rid, kind)
            if ms > 200:  # where did the time go (TLS done, first byte; connections opened)
                r.info = f"{r.info or kind} tls={t_tls} first_byte={t_first} connects={nconn}"
            self.record(t0, feature, ms, r)
        for num in range(len(reqs)):
            if num not in seen:
                self.record(t0, feature, 0.0, Result(0, "error", "curl_no_result"))

    def curl_loop(self, feature, h2c, every):
        while sleep_until(self.stop_at, every):
            self.curl_batch(feature, h2c)

    def admin_get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.cfg["admin_port"], timeout=10)
        try:
            c.request("GET", path, headers={"Authorization": "Bearer " + self.cfg["admin_token"],
                                            "Connection": "close"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def admin_scrape(self):
        for feature, path in (("admin_metrics", "/metrics"), ("admin_status", "/status"),
                              ("admin_upstreams", "/upstreams")):
            t0 = time.time()
            p0 = time.perf_counter()
            try:
                st, data = self.admin_get(path)
                if st != 200:
                    r = Result(st, "error", f"http_{st}:{error_code(data)}")
                elif path == "/metrics":
                    ok = b"gatehouse_http_requests_total" in data
                    r = Result(st, "ok" if ok else "error", "" if ok else "wrong_body:metrics")
                    if ok:
                        self.last_metrics = data
                else:
                    j = json.loads(data)
                    r = Result(st, "ok")
                    if path == "/status":
                        self.store_up = "1" if (j.get("store") or {}).get("up") else "0"
                        lr = j.get("last_reload") or {}
                        r.info = f"store_up={self.store_up} reload={lr.get('outcome', '-')}"
                    else:
                        states = []
                        for up in (j if isinstance(j, list) else j.get("upstreams", [])):
                            for t in up.get("targets", []):
                                if t.get("state") not in (None, "healthy"):
                                    states.append(f"{up.get('name')}/{t.get('url', t.get('address'))}={t.get('state')}")
                        r.info = ",".join(states) or "all healthy"
            except Exception as e:
                r = Result(0, "error", classify_exc(e, False))
            self.record(t0, feature, (time.perf_counter() - p0) * 1000, r, dataplane=False)

    def sample(self):
        pid = self.cfg["gw_pid"]
        rss = fds = threads = 0
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
        with self.lock:
            lat, self.interval_lat = self.interval_lat, []
            n, self.interval_n = self.interval_n, 0
            e, self.interval_err = self.interval_err, 0
        lat.sort()
        p50 = pct(lat, 50) if lat else 0.0
        p99 = pct(lat, 99) if lat else 0.0
        self.sample_file.write(f"{time.time():.3f}\t{rss}\t{fds}\t{threads}\t{n}\t{e}\t{p50:.2f}\t"
                               f"{p99:.2f}\t{self.store_up or '-'}\n")

    def sampler_loop(self):
        every = float(self.cfg.get("sample_seconds", 5))
        self.sample()
        while sleep_until(self.stop_at, every):
            self.admin_scrape()
            self.sample()
            self.flush()

    def run(self):
        cfg = self.cfg
        start = time.time()
        self.stop_at = start + float(cfg["duration"])
        self.last_metrics = b""
        meta = {"start": start, "duration": cfg["duration"], "rate": cfg["rate"],
                "workers": cfg["workers"], "sample_seconds": cfg.get("sample_seconds", 5)}
        with open(os.path.join(self.dir, "client_start.json"), "w") as f:
            json.dump(meta, f)
        threads = [threading.Thread(target=self.worker, args=(i, cfg["workers"]), daemon=True,
                                    name=f"worker-{i}") for i in range(cfg["workers"])]
        threads += [
            threading.Thread(target=self.wrong_password_loop, daemon=True, name="wrong-pw"),
            threading.Thread(target=self.curl_loop, args=("h2_tls", False, 1.0), daemon=True,
                             name="h2"),
            threading.Thread(target=self.curl_loop, args=("h2c", True, 2.0), daemon=True,
                             name="h2c"),
        ]
        sampler = threading.Thread(target=self.sampler_loop, daemon=True, name="sampler")
        for t in threads:
            t.start()
        sampler.start()
        for t in threads:
            t.join(timeout=max(1.0, self.stop_at + 40 - time.time()))
        sampler.join(timeout=10)
        self.sample()
        self.flush()
        try:
            st, data = self.admin_get("/metrics")
            if st == 200:
                self.last_metrics = data
        except Exception:
            pass
        with open(os.path.join(self.dir, "metrics_end.txt"), "wb") as f:
            f.write(self.last_metrics)
        self.req_file.close()
        self.sample_file.close()
        alive = [t.name for t in threads if t.is_alive()]
        with open(os.path.join(self.dir, "client_end.json"), "w") as f:
            tm = os.times()
            json.dump({"end": time.time(), "threads_still_running": alive,
                       "cpu_seconds": tm.user + tm.system + tm.children_user + tm.children_system},
                      f)


class Worker:
    def __init__(self):
        self.conns = {}
        self.uses = {}
        self.blob = b""
        self.new_tls_gen = None


def cert_gen(sock):
    """The generation soak.sh wrote in the served certificate's subject (O=soak-gen-N)."""
    try:
        for rdn in sock.getpeercert().get("subject", ()):
            for k, v in rdn:
                if k == "organizationName" and v.startswith("soak-gen-"):
                    return int(v[len("soak-gen-"):])
    except (AttributeError, ValueError):
        pass
    return -1


def sleep_until(stop_at, every):
    """Sleep `every` seconds, or until stop_at; False once stop_at has passed."""
    now = time.time()
    if now >= stop_at:
        return False
    time.sleep(min(every, stop_at - now))
    return time.time() < stop_at


def cache_result(cs):
    m = re.search(r"Gatehouse;\s*([^,]*)$", cs)
    if not m:
        return "none"
    s = m.group(1)
    if "store-unavailable" in s:
        return "bypass-store-unavailable"
    if "collapsed" in s:
        return "collapsed"
    if s.startswith("hit"):
        return "hit-stale" if "stale" in s else "hit"
    m2 = re.search(r"fwd=([a-z-]+)", s)
    return m2.group(1) if m2 else "other"


def curl_reason(msg):
    msg = msg.strip()
    return re.sub(r"[^A-Za-z0-9 ._-]", "", msg)[:60] or "-"


def check_dashboard(st, getheader, data, uid):
    v = getheader("x-soak-variant") or ""
    rid = getheader("x-request-id") or ""
    if st != 200:
        return Result(st, "error", f"http_{st}:{error_code(data)}", v, rid)
    degraded = getheader("x-gatehouse-degraded")
    try:
        j = json.loads(data)
    except ValueError:
        return Result(st, "error", "wrong_body:not_json", v, rid)
    if degraded:
        return Result(st, "error", f"degraded:{degraded}", v, rid, json.dumps(j.get("_errors"))[:200])
    user = j.get("user") or {}
    want_orders = [{"id": 1, "user": uid}, {"id": 2, "user": uid}]
    want_addr = {"id": "a-" + uid, "street": "Main St a-" + uid, "city": "Springfield"}
    if user.get("id") != uid or user.get("address_id") != "a-" + uid:
        return Result(st, "error", "wrong_body:aggregate_user", v, rid)
    if j.get("orders") != want_orders:
        return Result(st, "error", "wrong_body:aggregate_orders", v, rid)
    if j.get("address") != want_addr:
        return Result(st, "error", "wrong_body:aggregate_address", v, rid)
    return Result(st, "ok", "", v, rid)


# ------------------------------------------------------------------------- the report

# Which fault explains which error cause, and the window around the fault (seconds before its
# start, seconds after its end) in which it does.
EXPLAINS = {
    "upstream_kill": (1.0, 5.0, [
        r"^http_502:upstream_failed$", r"^http_502:upstream_connect_failed$",
        r"^http_503:no_healthy_target$", r"^http_504:", r"^http_50[24]:aggregate_call_failed$",
        r"^degraded:", r"^truncated_body$", r"^curl_(18|92):", r"^http_502:-$",
    ]),
    "redis_kill": (1.0, 5.0, [r"^http_503:rate_limit_unavailable$", r"^http_503:-$"]),
}


def read_tsv(path):
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == len(header):
                yield dict(zip(header, parts))


def fmt_ms(x):
    return "-" if x != x else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def report(d):
    meta = json.load(open(os.path.join(d, "meta.json")))
    cstart = json.load(open(os.path.join(d, "client_start.json")))
    start = cstart["start"]
    duration = float(cstart["duration"])
    out = []
    p = out.append

    faults = []
    if os.path.exists(os.path.join(d, "faults.tsv")):
        for f in read_tsv(os.path.join(d, "faults.tsv")):
            f["t_start"] = float(f["t_start"])
            f["t_end"] = float(f["t_end"])
            faults.append(f)
    windows = []  # (lo, hi, kind, index)
    for i, f in enumerate(faults):
        if f["kind"] in EXPLAINS:
            before, after, _ = EXPLAINS[f["kind"]]
            windows.append((f["t_start"] - before, f["t_end"] + after, f["kind"], i))

    def explained_by(cause, t):
        for lo, hi, kind, i in windows:
            if lo <= t <= hi and any(re.search(rx, cause) for rx in EXPLAINS[kind][2]):
                return kind, i
        return None, None

    # expected config variant over time (from the reload faults)
    reloads = sorted((f["t_end"], f["variant"], f["t_start"]) for f in faults
                     if f["kind"].startswith("reload") and f.get("variant", "-") != "-")
    reload_starts = sorted(f["t_start"] for f in faults if f["kind"].startswith("reload"))
    rot = sorted((f["t_end"], int(f["variant"])) for f in faults
                 if f["kind"] == "cert_rotate" and f.get("ok") == "1" and f["variant"].isdigit())

    def expected_variant(t):
        """The variant every answer started at t must carry, or None while a reload is in
        progress (from a reload's start to 1 s after it was seen applied)."""
        v = meta.get("initial_variant")
        for t_end, var, t_st in reloads:
            if t >= t_st and t < t_end + 1.0:
                return None
            if t >= t_end + 1.0:
                v = var
        return v

    feats = {}
    statuses = {}
    causes = {}
    buckets = {}
    bucket_s = max(10, int(round(duration / 20.0 / 10.0)) * 10) if duration >= 100 else 10
    total = 0
    cache_results = {}
    gens = {}
    examples = {}
    all_lat = []
    wrong_pw = []  # times of the deliberate wrong passwords (each one a full argon2 check)
    for r in read_tsv(os.path.join(d, "requests.tsv")):
        t = float(r["t"])
        feat = r["feature"]
        if feat == "auth_wrong":
            wrong_pw.append(t)
        ms = float(r["ms"])
        outcome, cause = r["outcome"], r["cause"]
        admin = feat.startswith("admin_")
        # config reloads must take: an answer with another variant than the running config's
        if r["variant"] not in ("-", "") and outcome != "error":
            ev = expected_variant(t)
            if ev is not None and r["variant"] != ev:
                outcome, cause = "error", f"stale_config_variant:{r['variant']}!={ev}"
        # a new TLS connection after a rotation must see the new certificate
        m = re.search(r"newconn gen=(-?\d+)", r["info"])
        if m:
            g = int(m.group(1))
            gens[g] = gens.get(g, 0) + 1
            want = None
            for t_end, gen in rot:
                if t >= t_end + 1.0:
                    want = gen
            if want is not None and g < want and outcome != "error":
                outcome, cause = "error", f"stale_certificate:gen{g}<gen{want}"
        kind = "ok"
        if outcome == "expected":
            kind = "expected"
        elif outcome == "error":
            fk, fi = explained_by(cause, t)
            kind = "explained" if fk else "unexplained"
            c = causes.setdefault(cause, {"n": 0, "explained": 0, "feats": {}, "by": {},
                                          "first": t, "last": t})
            c["n"] += 1
            c["feats"][feat] = c["feats"].get(feat, 0) + 1
            c["first"] = min(c["first"], t)
            c["last"] = max(c["last"], t)
            if fk:
                c["explained"] += 1
                c["by"][f"{fk} #{fi + 1}"] = c["by"].get(f"{fk} #{fi + 1}", 0) + 1
            elif len(examples.setdefault(cause, [])) < 3:
                examples[cause].append((t, feat, r["status"], r["rid"], r["info"]))
        if feat == "cache":
            cr = r["info"].split("cache=", 1)[-1] if "cache=" in r["info"] else "?"
            cache_results[cr] = cache_results.get(cr, 0) + 1
        total += 1
        fe = feats.setdefault(feat, {"n": 0, "ok": 0, "expected": 0, "explained": 0,
                                     "unexplained": 0, "lat": []})
        fe["n"] += 1
        fe[kind] += 1
        if r["status"] != "0" or kind == "ok":
            fe["lat"].append(ms)
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        if not admin:
            b = int((t - start) // bucket_s)
            bk = buckets.setdefault(b, {"n": 0, "expected": 0, "explained": 0, "unexplained": 0,
                                        "lat": []})
            bk["n"] += 1
            if kind in ("expected", "explained", "unexplained"):
                bk[kind] += 1
            if feat != "stream" and not feat.startswith("h2") and r["status"] != "0":
                bk["lat"].append(ms)
                all_lat.append(ms)

    samples = []
    for s in read_tsv(os.path.join(d, "samples.tsv")):
        samples.append({"t": float(s["t"]), "rss": int(s["rss_kib"]), "fds": int(s["fds"]),
                        "threads": int(s["threads"]), "p50": float(s["p50_ms"]),
                        "p99": float(s["p99_ms"]), "n": int(s["requests"]),
                        "store_up": s["store_up"]})

    # ---------------- verdict inputs
    reasons = []
    unexplained = sum(c["n"] - c["explained"] for c in causes.values())
    if unexplained:
        reasons.append(f"{unexplained} error(s) not explained by a fault window")
    failed_faults = [f for f in faults if f.get("ok") != "1"]
    if failed_faults:
        reasons.append(f"{len(failed_faults)} fault check(s) failed: " +
                       "; ".join(f"{f['kind']} at +{f['t_start'] - start:.0f}s ({f['detail']})"
                                 for f in failed_faults))
    if not meta.get("gateway_alive_at_end", True):
        reasons.append("the gateway did not run to the end and stop cleanly: " + meta.get("gateway_exit", "?"))
    warm = start + 0.2 * duration
    post = [s for s in samples if s["t"] >= warm and s["rss"] > 0]
    rss_line = "no RSS samples after warm-up"
    rss_ok = False
    if len(post) >= 4:
        early = [s["rss"] for s in post if s["t"] < start + 0.4 * duration] or [post[0]["rss"]]
        late = [s["rss"] for s in post if s["t"] >= start + 0.9 * duration] or [post[-1]["rss"]]
        base = statistics.median(early) / 1024.0
        end = statistics.median(late) / 1024.0
        growth = end - base
        bound = max(float(meta.get("rss_bound_mib", 5)), base * float(meta.get("rss_bound_pct", 10)) / 100.0)
        xs = [(s["t"] - start) / 60.0 for s in post]
        ys = [s["rss"] / 1024.0 for s in post]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs) or 1.0
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den
        rss_ok = growth <= bound
        fds_post = [s["fds"] for s in post]
        rss_line = (f"RSS after warm-up (from {0.2 * duration:.0f} s): median {base:.1f} MiB over "
                    f"20-40% of the run, {end:.1f} MiB over the last 10%: growth {growth:+.1f} MiB "
                    f"(bound {bound:.1f} MiB = max({meta.get('rss_bound_mib', 5)} MiB, "
                    f"{meta.get('rss_bound_pct', 10)}%)); least-squares slope {slope:+.2f} MiB/min; "
                    f"min/max {min(ys):.1f}/{max(ys):.1f} MiB. Open fds after warm-up: "
                    f"{min(fds_post)}-{max(fds_post)} (first {fds_post[0]}, last {fds_post[-1]}). "
                    f"Threads: {post[-1]['threads']}.")
        if not rss_ok:
            reasons.append(f"RSS grew {growth:.1f} MiB after warm-up (bound {bound:.1f} MiB)")
    else:
        reasons.append("too few RSS samples after warm-up")

    cend = {}
    if os.path.exists(os.path.join(d, "client_end.json")):
        cend = json.load(open(os.path.join(d, "client_end.json")))
    else:
        reasons.append("the client did not finish (no client_end.json)")
    if cend.get("threads_still_running"):
        reasons.append("client threads did not stop: " + ", ".join(cend["threads_still_running"]))

    verdict = "PASS" if not reasons else "FAIL"

    # ---------------- output
    n_err = sum(c["n"] for c in causes.values())
    n_exp = sum(f["expected"] for f in feats.values())
    rate = total / duration if duration else 0
    p(f"**Verdict: {verdict}**" + ("" if not reasons else " — " + "; ".join(reasons)))
    p("")
    p(f"{total} requests in {duration:.0f} s ({rate:.0f}/s), {n_exp} expected refusals (429 over the "
      f"greedy tenant's limit, 401 for the deliberate wrong password), {n_err} errors: "
      f"{n_err - unexplained} explained by a fault window, {unexplained} not. "
      f"{len(faults)} faults, {len(failed_faults)} failed checks. p50/p99 of all plain requests "
      f"(no stream, no h2 batch): {fmt_ms(pct(sorted(all_lat), 50))} / {fmt_ms(pct(sorted(all_lat), 99))} ms.")
    p("")
    p(rss_line)
    cpu = []
    if meta.get("gateway_cpu_seconds") is not None:
        cpu.append(f"the gateway {meta['gateway_cpu_seconds']:.0f} s "
                   f"({100 * meta['gateway_cpu_seconds'] / duration:.0f}% of one core)")
    if cend.get("cpu_seconds") is not None:
        cpu.append(f"the client (with its curl processes) {cend['cpu_seconds']:.0f} s "
                   f"({100 * cend['cpu_seconds'] / duration:.0f}%)")
    if cpu:
        p("")
        p("CPU time over the run: " + ", ".join(cpu) + ".")
    steps = []
    for a, b in zip(samples, samples[1:]):
        if a["rss"] > 0 and b["rss"] - a["rss"] > 8 * 1024:
            fs = [f["kind"] for f in faults if a["t"] < f["t_start"] <= b["t"]]
            nw = sum(1 for t in wrong_pw if a["t"] - 1 < t <= b["t"])
            steps.append(f"+{b['t'] - start:.0f}s {(b['rss'] - a['rss']) / 1024:+.1f} MiB"
                         f" ({nw} wrong password{'s' if nw != 1 else ''}"
                         f"{', ' + ', '.join(fs) if fs else ''})")
    if steps:
        p("")
        p(f"RSS steps of more than 8 MiB between two samples ({len(steps)}), with what happened in "
          "the interval (the deliberate wrong passwords, one every 15 s, each a full argon2id check; "
          "faults): " + "; ".join(steps) + ".")
    p("")
    p("### Requests by feature")
    p("")
    p("| feature | requests | ok | expected | errors explained | errors unexplained | p50 ms | p99 ms |")
    p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in sorted(feats, key=lambda k: (k.startswith("admin"), -feats[k]["n"])):
        fe = feats[name]
        lat = sorted(fe["lat"])
        p(f"| {name} | {fe['n']} | {fe['ok']} | {fe['expected']} | {fe['explained']} | "
          f"{fe['unexplained']} | {fmt_ms(pct(lat, 50))} | {fmt_ms(pct(lat, 99))} |")
    p("")
    p("Statuses (0 = no HTTP answer): " + ", ".join(f"{k}: {v}" for k, v in
                                                   sorted(statuses.items(), key=lambda kv: int(kv[0]))))
    if cache_results:
        p("")
        p("Response cache (Cache-Status of the `cache` feature): " +
          ", ".join(f"{k}: {v}" for k, v in sorted(cache_results.items(), key=lambda kv: -kv[1])))
    if gens:
        p("")
        p("New TLS connections by certificate generation: " +
          ", ".join(f"gen {k}: {v}" for k, v in sorted(gens.items())))
    p("")
    p("### Errors by cause")
    p("")
    if not causes:
        p("None.")
    else:
        p("| cause | count | explained | unexplained | features | explained by | first / last (s) |")
        p("| --- | ---: | ---: | ---: | --- | --- | --- |")
        for cause, c in sorted(causes.items(), key=lambda kv: -kv[1]["n"]):
            fs = ", ".join(f"{k} {v}" for k, v in sorted(c["feats"].items(), key=lambda kv: -kv[1]))
            by = ", ".join(f"{k} ({v})" for k, v in c["by"].items()) or "-"
            p(f"| `{cause}` | {c['n']} | {c['explained']} | {c['n'] - c['explained']} | {fs} | "
              f"{by} | +{c['first'] - start:.1f} / +{c['last'] - start:.1f} |")
        if examples:
            p("")
            p("Unexplained examples (time, feature, status, request id, detail):")
            p("")
            for cause, ex in examples.items():
                for t, feat, st, rid, info in ex:
                    p(f"- `{cause}` +{t - start:.2f}s {feat} status {st} request_id {rid} {info}")
    p("")
    p(f"### Over time ({bucket_s} s buckets)")
    p("")
    p("| t (s) | requests | expected | errors expl. | errors unexpl. | p50 ms | p99 ms | RSS MiB | fds | faults |")
    p("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for b in sorted(buckets):
        bk = buckets[b]
        lo, hi = start + b * bucket_s, start + (b + 1) * bucket_s
        ss = [s for s in samples if lo <= s["t"] < hi and s["rss"] > 0]
        rss = f"{ss[-1]['rss'] / 1024:.1f}" if ss else "-"
        fds = str(ss[-1]["fds"]) if ss else "-"
        fk = ", ".join(f["kind"] for f in faults if lo <= f["t_start"] < hi) or ""
        lat = sorted(bk["lat"])
        p(f"| {b * bucket_s} | {bk['n']} | {bk['expected']} | {bk['explained']} | {bk['unexplained']} | "
          f"{fmt_ms(pct(lat, 50))} | {fmt_ms(pct(lat, 99))} | {rss} | {fds} | {fk} |")
    p("")
    p("### Fault log")
    p("")
    if not faults:
        p("No faults were injected.")
    else:
        p("| # | start (s) | end (s) | fault | target | check | detail |")
        p("| ---: | ---: | ---: | --- | --- | --- | --- |")
        for i, f in enumerate(faults):
            p(f"| {i + 1} | +{f['t_start'] - start:.1f} | +{f['t_end'] - start:.1f} | {f['kind']} | "
              f"{f['target']} | {'ok' if f.get('ok') == '1' else '**FAILED**'} | {f['detail']} |")
    p("")
    p(f"Fault windows that explain errors: upstream_kill from {EXPLAINS['upstream_kill'][0]:.0f} s "
      f"before the kill to {EXPLAINS['upstream_kill'][1]:.0f} s after the instance answers again "
      "(502/503/504 from the gateway, a degraded or failed aggregation, a stream cut off); "
      f"redis_kill from {EXPLAINS['redis_kill'][0]:.0f} s before to {EXPLAINS['redis_kill'][1]:.0f} s "
      "after Redis answers again (503 `rate_limit_unavailable` of the fail_closed route only). "
      "Nothing explains an error at a reload or a certificate rotation.")
    mpath = os.path.join(d, "metrics_end.txt")
    if os.path.exists(mpath):
        p("")
        p("### Gateway counters at the end (/metrics)")
        p("")
        for line in summarize_metrics(open(mpath, errors="replace").read()):
            p("- " + line)
    logs = meta.get("gateway_log_summary")
    if logs:
        p("")
        p("### Gateway log (WARN/ERROR lines, most frequent first)")
        p("")
        for line in logs:
            p("- " + line)
    print("\n".join(out))
    return 0 if verdict == "PASS" else 1


def summarize_metrics(text):
    sums = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+([0-9.eE+-]+|NaN|\+Inf)", line)
        if not m:
            continue
        name, labels, val = m.group(1), m.group(3) or "", m.group(4)
        try:
            v = float(val)
        except ValueError:
            continue
        lab = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
        keys = {
            "gatehouse_config_reloads_total": "result",
            "gatehouse_upstream_retries_total": "reason",
            "gatehouse_upstream_errors_total": "kind",
            "gatehouse_upstream_ejections_total": None,
            "gatehouse_store_errors_total": None,
            "gatehouse_rate_limit_total": "result",
            "gatehouse_cache_total": "result",
            "gatehouse_auth_total": "result",
            "gatehouse_aggregate_calls_total": "result",
            "gatehouse_downstream_rejected_total": "reason",
            "gatehouse_http_requests_total": "status_class",
            "gatehouse_upstream_retry_budget_exhausted_total": None,
        }
        if name in keys:
            k = keys[name]
            sub = lab.get(k, "") if k else ""
            sums.setdefault(name, {})
            sums[name][sub] = sums[name].get(sub, 0) + v
    lines = []
    for name, d in sums.items():
        parts = ", ".join(f"{k}={int(v)}" if k else f"{int(v)}" for k, v in sorted(d.items()))
        lines.append(f"`{name}`: {parts}")
    return lines


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("run", "report"):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "run":
        cfg = json.load(open(sys.argv[2]))
        Driver(cfg).run()
        return 0
    return report(sys.argv[2])


if __name__ == "__main__":
    sys.exit(main())
