#!/usr/bin/env python3
"""Where a cut's CPU goes, per thread: `bench/cutprobe.py REEL FORMATS N SECONDS [INTERVAL]`.

Runs `REEL serve` (tmpfs, the benchmark's template) with N publishers of `reel-bench publish`
for SECONDS, samples every thread's CPU time and context switches
(`/proc/PID/task/TID/schedstat`) every 100 ms, and prints each whole second's CPU, the four
busiest seconds with each thread name's excess over its median second, the excess per cut, and a
`CUT` line (median and busiest second, RSS per stream). Build first:
`cargo build --release -p reel -p reel-bench`.

Environment: CLIP (an FLV to publish; default: encoded once, like bench/run.sh's 500k clip),
SERVER (more [server] lines), KEEP=1 (keep the run's folder), PERF=FILE (a `perf record -g` of
the run; PERF_F its frequency), PERF_AT=A:B with PERF_OUT=FILE (a DWARF `perf record` from second
A to B only), SMAPS_AT=S1,S2,... (the server's anonymous memory at those seconds, and which
mappings grew between them: allocator heaps are the 64 MiB-aligned ones), MSTATS_AT=S (glibc's
`malloc_stats()` at that second, through `gdb`, into the server's log; KEEP=1 to read it).
Also printed: the threads by name before and at the end, and RSS per stream second by second
(each second's last sample).
"""
import os, sys, time, socket, subprocess, tempfile, shutil, statistics, collections, json

reel, formats, n, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
interval = sys.argv[5] if len(sys.argv) > 5 else "30s"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "reel-bench")
CLIP = os.environ.get("CLIP") or os.path.join(tempfile.gettempdir(), "reel-cutprobe-500k.flv")
if not os.path.exists(CLIP):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "60", "-c:v", "libx264",
                    "-preset", "superfast", "-bf", "2", "-g", "50", "-keyint_min", "50", "-sc_threshold", "0",
                    "-b:v", "436k", "-maxrate", "436k", "-bufsize", "436k", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-b:a", "64k", "-f", "flv", CLIP], check=True)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def threads(pid):
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            st = open(f"/proc/{pid}/task/{t}/schedstat").read().split()
            ns = int(st[0]); sw = int(st[2])
            name = open(f"/proc/{pid}/task/{t}/comm").read().strip()
        except OSError:
            continue
        out[int(t)] = (name, ns, sw)
    return out

def anon_maps(pid):
    """Anonymous mappings with resident pages: [(start, size KB, rss KB)]."""
    out, cur = [], None
    for l in open(f"/proc/{pid}/smaps"):
        f = l.split()
        if "-" in f[0] and len(f) >= 5 and not f[0].endswith(":"):
            cur = [f[0].split("-")[0], 0, 0, f[5] if len(f) > 5 else ""]
            out.append(cur)
        elif f[0] == "Size:":
            cur[1] = int(f[1])
        elif f[0] == "Rss:":
            cur[2] = int(f[1])
    return [(a, sz, r) for a, sz, r, name in out if r and name in ("", "[heap]", "[stack]")]

def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])

d = tempfile.mkdtemp(dir="/dev/shm", prefix="cutprobe.")
port = free_port()
fmts = ", ".join(f'"{x}"' for x in formats.split(","))
open(f"{d}/reel.toml", "w").write(f"""[server]
rtmp_listen = "127.0.0.1:{port}"
http_listen = "127.0.0.1:{free_port()}"
data_dir = "{d}/data"
{os.environ.get('SERVER', '')}
[storage.local]
kind = "fs"
root = "{d}/rec"
[template.default]
formats = [{fmts}]
interval = "{interval}"
storage = "local"
[[rule]]
template = "default"
""")
srv = subprocess.Popen([reel, "serve", "--config", f"{d}/reel.toml"], stdout=subprocess.DEVNULL,
                       stderr=open(f"{d}/reel.log", "w"), env=dict(os.environ, REEL_LOG="info"))
try:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); break
        except OSError:
            time.sleep(0.1)
    time.sleep(1)
    subprocess.run([BENCH, "publish", "--url", f"rtmp://127.0.0.1:{port}/live/warmup", "--streams", "1", "--input", CLIP,
                    "--duration", "3s", "--ramp", "0s", "--tick", "20ms"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    base = rss(srv.pid)
    base_threads = collections.Counter(v[0] for v in threads(srv.pid).values())
    ramp = 1 if n <= 10 else min(10, max(2, n // 50))
    perf = None
    if os.environ.get("PERF"):
        perf = subprocess.Popen(["perf", "record", "-q", "-F", os.environ.get("PERF_F", "999"), "-g", "-p", str(srv.pid), "-o", os.environ["PERF"]],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pub = subprocess.Popen([BENCH, "publish", "--url", f"rtmp://127.0.0.1:{port}/live/s_{{n}}", "--streams", str(n),
                            "--input", CLIP, "--duration", f"{secs}s", "--ramp", f"{ramp}s", "--tick", "20ms"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    t0 = time.time()
    samples = []  # (t, {tid: (name, ns)})
    peak = base
    rss_by_sec = {}
    mstats_done = False
    smaps_done = {}
    seen = set()
    win = os.environ.get("PERF_AT")
    wperf = None
    while pub.poll() is None:
        if win:
            a, b = map(float, win.split(":"))
            el = time.time() - t0
            if wperf is None and el >= a:
                wperf = subprocess.Popen(["perf", "record", "-q", "-F", os.environ.get("PERF_F", "999"), "--call-graph", "dwarf,16384",
                                          "-p", str(srv.pid), "-o", os.environ["PERF_OUT"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if wperf is not None and el >= b and wperf.poll() is None:
                wperf.send_signal(2); wperf.wait()
        if os.environ.get("MSTATS_AT") and not mstats_done and time.time() - t0 >= float(os.environ["MSTATS_AT"]):
            # glibc's per-heap figures (system bytes, in use), written to the server's stderr
            subprocess.run(["gdb", "-p", str(srv.pid), "-batch", "-ex", "call (void)malloc_stats()"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            mstats_done = True
        for at in os.environ.get("SMAPS_AT", "").split(","):
            if at and at not in smaps_done and time.time() - t0 >= float(at):
                smaps_done[at] = anon_maps(srv.pid)
        th = threads(srv.pid)
        seen |= set(th)
        samples.append((time.time() - t0, th))
        r = rss(srv.pid)
        peak = max(peak, r)
        rss_by_sec[int(time.time() - t0)] = r
        time.sleep(0.1)
    if perf:
        perf.send_signal(2); perf.wait()
    report = json.loads(pub.stdout.read().decode().strip().splitlines()[-1])
    # per whole second [k, k+1): CPU by thread name
    per = []
    for k in range(ramp + 2, secs):
        a = min(samples, key=lambda s: abs(s[0] - k))
        b = min(samples, key=lambda s: abs(s[0] - (k + 1)))
        g = collections.Counter()
        for tid, (name, ns, sw) in b[1].items():
            prev = a[1].get(tid, (name, 0, 0))[1]
            g["#sw"] += sw - a[1].get(tid, (name, 0, 0))[2]
            g["#sw " + name] += sw - a[1].get(tid, (name, 0, 0))[2]
            g[name] += ns - prev
        tot = sum(v for k, v in g.items() if not k.startswith("#sw")) / 1e9 / (b[0] - a[0])
        per.append((k, tot, g))
    med = statistics.median(x[1] for x in per)
    mx = max(per, key=lambda x: x[1])
    print("seconds:", " ".join(f"{k}:{t*1000:.0f}" for k, t, _ in per))
    medg = {}
    allnames = set().union(*(g.keys() for _, _, g in per))
    for nm in allnames:
        medg[nm] = statistics.median(g.get(nm, 0) for _, _, g in per)
    cuts = sorted(per, key=lambda x: -x[1])[:4]
    for k, t, g in cuts:
        ex = {nm: (g.get(nm, 0) - medg[nm]) / 1e6 for nm in allnames if not nm.startswith("#sw")}
        print(f"sec {k}: {t*1000:.1f} ms switches {g['#sw']} (median {medg['#sw']:.0f})  excess by thread: " + ", ".join(f"{nm}={v:.1f}" for nm, v in sorted(ex.items(), key=lambda x: -x[1]) if abs(v) >= 0.5) + " | " + ", ".join(f"{nm[4:]}={g.get(nm,0)}({medg[nm]:.0f})" for nm in sorted(allnames) if nm.startswith("#sw ")))
    iv = int(interval[:-1]) * {"s": 1, "m": 60, "h": 3600}.get(interval[-1], 1)
    ncuts = max(1, len([c for c in range(iv, secs, iv) if c >= ramp + 2]))
    tot_ex = collections.Counter()
    for k, t, g in per:
        for nm in allnames:
            if not nm.startswith("#"):
                tot_ex[nm] += (g.get(nm, 0) - medg[nm]) / 1e6
        tot_ex["ALL"] += t * 1000 - med * 1000
    print(f"EXCESS per cut ({ncuts} cuts): " + ", ".join(f"{k}={v/ncuts:.1f}" for k, v in sorted(tot_ex.items(), key=lambda x: -x[1])))
    end_threads = collections.Counter(v[0] for v in samples[-1][1].values())
    print("THREADS before: " + ", ".join(f"{k}={v}" for k, v in sorted(base_threads.items())) +
          " | at the end: " + ", ".join(f"{k}={v}" for k, v in sorted(end_threads.items())))
    print("RSS KB/stream by second: " + " ".join(f"{k}:{(v - base) / n:.0f}" for k, v in sorted(rss_by_sec.items())))
    prev = None
    for at, maps in smaps_done.items():
        print(f"ANON at {at}s: total {sum(m[2] for m in maps)} KB")
        if prev is not None:
            before = {a: r for a, _, r in prev}
            print("   grew: " + " ".join(f"{a}({sz} KB):{before.get(a, 0)}->{r}" for a, sz, r in maps if r - before.get(a, 0) >= 8))
        prev = maps
    print(f"CUT median={med*1000:.1f}ms busiest={mx[1]*1000:.1f}ms ratio={mx[1]/med:.2f} threads_seen={len(seen)} "
          f"rss_kb_per_stream={(peak-base)/n:.0f} frames_sent={report.get('frames_sent')} write_p99={report.get('write_ms_p99')}")
finally:
    srv.terminate()
    try:
        srv.wait(30)
    except subprocess.TimeoutExpired:
        srv.kill()
    if os.environ.get("KEEP"):
        print("kept", d)
    else:
        shutil.rmtree(d, ignore_errors=True)
