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
A to B only).
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
        th = threads(srv.pid)
        seen |= set(th)
        samples.append((time.time() - t0, th))
        peak = max(peak, rss(srv.pid))
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
