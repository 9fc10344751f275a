#!/usr/bin/env python3
# Groups a perf report (--no-children --sort dso,symbol --stdio -g none) into the cost buckets of
# issue 14 (bench/profile.sh runs it). Symbols are matched in order; inlining blurs the buckets.
import re, sys
# perf report --no-children --sort dso,symbol --stdio -g none  ->  shares by group
rules = [
    ("allocation (malloc/free/realloc)", r"malloc|_int_free|\bfree\b|cfree|realloc|tcache|__rust_alloc|__rdl_|__rust_dealloc|_int_realloc|unlink_chunk|malloc_consolidate|sysmalloc"),
    ("memcpy/memmove/memset", r"memmove|memcpy|memset|memcmp"),
    ("hyper client (dispatch channel, SendRequest, want)", r"hyper::client|want::|hyper::proto::h1::role::Client|hyper_util::client"),
    ("hyper server (dispatch/conn/io/role; shared h1 generics)", r"hyper::proto|hyper::server|hyper::body|hyper_util::server|hyper::common|httparse"),
    ("HeaderMap / http types", r"http::header|http::uri|http::request|http::response|http::method|http::extensions|HeaderMap|HeaderValue|HeaderName"),
    ("bytes (Bytes/BytesMut refcounts)", r"bytes::"),
    ("our code: access log", r"gatehouse::observe::access_log|std::sync::mpmc|std::sync::mpsc|lock_contended|Mutex|futex"),
    ("our code: metrics", r"gatehouse::observe::metrics|prometheus"),
    ("our code: pool / upstream::send / exchange", r"gatehouse::upstream"),
    ("our code: gateway::handle/forward, proxy, server, router, other", r"gatehouse::"),
    ("tokio scheduling / IO / timers", r"tokio::|mio::|epoll|core::task|futures_util|futures_core"),
    ("clock_gettime (vdso) / time", r"clock_gettime|std::time|Instant"),
    ("libc syscall wrappers", r"writev|__libc_recv|__libc_send|recvfrom|sendto|__GI___|syscall|read$|write$"),
]
tot = {"kernel": 0.0}
groups = {}
top = []
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*\S)", line)
    if not m: continue
    pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    if kind == "k": tot["kernel"] += pct; continue
    tot[dso] = tot.get(dso, 0) + pct
    top.append((pct, dso, sym))
    for name, rx in rules:
        if re.search(rx, sym):
            break
    else:
        name = "other user space"
    groups[name] = groups.get(name, 0) + pct
user = sum(p for p, _, _ in top)
print("dso split:", ", ".join(f"{k} {v:.1f}%" for k, v in sorted(tot.items(), key=lambda x: -x[1])))
print(f"user space total {user:.1f}% of samples")
print("| group | % of all samples | % of user space |\n| --- | --- | --- |")
for k, v in sorted(groups.items(), key=lambda x: -x[1]):
    print(f"| {k} | {v:.1f} | {100*v/user:.0f} |")
print("\ntop user-space symbols:\n| % | dso | symbol |\n| --- | --- | --- |")
for p, d, s in sorted(top, reverse=True)[:int(sys.argv[2]) if len(sys.argv) > 2 else 25]:
    s = re.sub(r"<[^<>]*(<[^<>]*(<[^<>]*>[^<>]*)*>[^<>]*)*>", "<..>", s)[:110]
    print(f"| {p:.2f} | {d} | `{s}` |")
