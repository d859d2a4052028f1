#!/usr/bin/env bash
# Reel benchmarks, measured against peers in the same run on the same machine:
#   (a) offline remux: `reel remux` vs `ffmpeg -c copy` (and `cp` as the physical limit)
#   (b) live recording: `reel serve` vs nginx-rtmp, both fed by `reel-bench publish`
#   (c) plugin decision cost, when a benchmark for it exists
# and writes the results to BENCHMARKS.md.
#
# Bounded in time: BENCH_BUDGET seconds in all, every step under `timeout`; steps that no
# longer fit are reported as skipped. Everything it starts it stops by PID on exit.
#
# Settings (environment):
#   BENCH_BUDGET=1500        total seconds
#   BENCH_REMUX_MB=1024      size of the remux inputs
#   BENCH_CLIP_SECONDS=120   length of the clip encoded once, then looped to the size
#   BENCH_SECONDS=60         media seconds each live publisher sends
#   BENCH_STREAMS="10 100"   publisher counts at ~500 kbit/s (BENCH_FULL=1: "10 100 500 1000")
#   BENCH_STREAMS_HD="10 100" publisher counts at ~2.5 Mbit/s ("" leaves them out)
#   BENCH_REPEAT=3           runs of each remux command (the fastest is reported)
#   BENCH_TICK=20ms          publisher pacing tick (one write per stream per tick)
#   BENCH_OUT=BENCHMARKS.md  report file (relative to the repository root)
#   BENCH_SKIP_REMUX=1 / BENCH_SKIP_LIVE=1 / BENCH_SKIP_PLUGINS=1 to leave a part out
#   BENCH_REEL=path      the reel binary to measure (default: this tree's release build)
#   BENCH_REEL_BEFORE=path  also measure this reel binary (an earlier build) beside it, as
#                        "reel-before", in the same run
#   BENCH_INTERVAL=30s   files are cut this often (reel `interval`, nginx `record_interval`)
#   BENCH_LIVE_FORMATS="flv flv,hls,mp4"  Reel's format sets (nginx records FLV)
#   BENCH_REEL_SERVER="flush_bytes = 65536;flush_interval = \"250ms\""  more [server] settings
#                        for Reel (`;` separates lines)
#   BENCH_REEL_BEFORE_SERVER=...  the same for reel-before (default: BENCH_REEL_SERVER); with
#                        BENCH_REEL_BEFORE set to this build, compares two settings in one run
#   BENCH_DIR=dir        scratch space and recordings (default /dev/shm: tmpfs)
#   BENCH_PERF_DIR=dir   a `perf` profile of each Reel case, kept there (NAME.data, NAME.txt)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUDGET=${BENCH_BUDGET:-1500}
REMUX_MB=${BENCH_REMUX_MB:-1024}
CLIP_SECONDS=${BENCH_CLIP_SECONDS:-120}
LIVE_SECONDS=${BENCH_SECONDS:-60}
TICK=${BENCH_TICK:-20ms}
REPEAT=${BENCH_REPEAT:-3}
if [ "${BENCH_FULL:-0}" = 1 ]; then
    STREAMS=${BENCH_STREAMS:-"10 100 500 1000"}
else
    STREAMS=${BENCH_STREAMS:-"10 100"}
fi
STREAMS_HD=${BENCH_STREAMS_HD-"10 100"}
OUT=${BENCH_OUT:-BENCHMARKS.md}
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
T0=$(date +%s)
INTERVAL=${BENCH_INTERVAL:-30s}
CMDLINE="BENCH_INTERVAL=$INTERVAL BENCH_BUDGET=$BUDGET BENCH_REMUX_MB=$REMUX_MB BENCH_CLIP_SECONDS=$CLIP_SECONDS BENCH_SECONDS=$LIVE_SECONDS BENCH_STREAMS=\"$STREAMS\" BENCH_STREAMS_HD=\"$STREAMS_HD\" BENCH_TICK=$TICK bench/run.sh"

log() { echo "[bench $(($(date +%s) - T0))s] $*" >&2; }
remaining() { echo $((BUDGET - ($(date +%s) - T0))); }
# Seconds a step may take: its own cap, or what is left of the budget.
cap() {
    local want=$1 left
    left=$(remaining)
    if [ "$left" -lt "$want" ]; then echo "$left"; else echo "$want"; fi
}

# Scratch space in tmpfs: inputs, outputs and recordings never wait on a disk
# (BENCH_DIR=dir: there instead, e.g. on a disk, to count what its write-back costs).
SHM=${BENCH_DIR:-/dev/shm}
[ -w "$SHM" ] || SHM=${TMPDIR:-/tmp}
WORK=$(mktemp -d "$SHM/reel-bench.XXXXXX")
RES="$WORK/results"
mkdir -p "$RES"
PIDFILE="$WORK/pids"
: >"$PIDFILE"

cleanup() {
    local p
    # Processes started here (the live runner records its servers in the same file).
    while read -r p; do
        [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true
    done <"$PIDFILE"
    sleep 0.5
    while read -r p; do
        [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true
    done <"$PIDFILE"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools -------------------------------------------------------------------------------
NGINX_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so
need=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need+=(ffmpeg)
command -v nginx >/dev/null || need+=(nginx)
[ -f "$NGINX_MODULE" ] || need+=(libnginx-mod-rtmp)
[ -x /usr/bin/time ] || need+=(time)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    # Keep the nginx package from starting its own service on port 80.
    policy_made=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_made=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout "$(cap 600)" apt-get update -qq || true
    timeout "$(cap 900)" apt-get install -y -qq --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 || log "apt-get install failed: $(tail -3 "$WORK/apt.log")"
    [ "$policy_made" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
HAVE_NGINX=0
command -v nginx >/dev/null && [ -f "$NGINX_MODULE" ] && HAVE_NGINX=1
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- build -------------------------------------------------------------------------------
log "building reel (release)"
(cd "$ROOT" && timeout "$(cap 1200)" cargo build --release -q -p reel -p reel-bench)
# BENCH_REEL measures another reel binary (an earlier build, to compare) with this run's tools.
REEL="${BENCH_REEL:-${CARGO_TARGET_DIR:-$ROOT/target}/release/reel}"
REEL_BENCH="${CARGO_TARGET_DIR:-$ROOT/target}/release/reel-bench"
[ -x "$REEL" ] || { echo "no reel binary at $REEL" >&2; exit 1; }
[ -x "$REEL_BENCH" ] || { echo "no load generator at $REEL_BENCH" >&2; exit 1; }

# --- media -------------------------------------------------------------------------------
# clip NAME SIZE VBITRATE: CLIP_SECONDS of testsrc2 (x264, 2 s GOP, B-frames) + AAC, encoded once.
clip() {
    local name=$1 size=$2 vb=$3 secs=${4:-$CLIP_SECONDS}
    local f="$WORK/$name.flv"
    [ -f "$f" ] && { echo "$f"; return; }
    log "encoding $name ($size, $vb video, ${secs}s)"
    timeout "$(cap 900)" ffmpeg -nostdin -v error -y -f lavfi -i "testsrc2=size=$size:rate=25" \
        -f lavfi -i "sine=frequency=440:sample_rate=44100" -t "$secs" \
        -c:v libx264 -preset superfast -bf 2 -g 50 -keyint_min 50 -sc_threshold 0 \
        -b:v "$vb" -maxrate "$vb" -bufsize "$vb" -pix_fmt yuv420p -c:a aac -b:a 64k -f flv "$f"
    echo "$f"
}
# looped SRC MB: SRC repeated with -stream_loop (no re-encoding) to about MB megabytes.
looped() {
    local src=$1 mb=$2 out="${1%.flv}-${2}MB.flv" size loops
    size=$(stat -c %s "$src")
    loops=$(((mb * 1000000 + size - 1) / size - 1))
    [ "$loops" -lt 0 ] && loops=0
    timeout "$(cap 600)" ffmpeg -nostdin -v error -y -stream_loop "$loops" -i "$src" -c copy -f flv "$out"
    echo "$out"
}

reel_supports() { # FORMAT: does `reel remux` know it?
    local d="$WORK/probe-$1"
    mkdir -p "$d"
    "$REEL" remux "$SMALL" -f "$1" -o "$d/probe.$2" >/dev/null 2>&1
}

# A small file for support probes.
SMALL=$(clip small 320x240 300k 4)
declare -A REEL_FMT=()
for f in flv:flv mp4:mp4 hls:m3u8 aac:aac; do
    if reel_supports "${f%%:*}" "${f##*:}"; then REEL_FMT[${f%%:*}]=1; else REEL_FMT[${f%%:*}]=0; fi
done
log "reel remux formats: flv=${REEL_FMT[flv]} mp4=${REEL_FMT[mp4]} hls=${REEL_FMT[hls]} aac=${REEL_FMT[aac]}"

# --- (a) offline remux ---------------------------------------------------------------------
# timed LABEL FORMAT INPUT OUTDIR -- CMD...: one JSON line in remux.jsonl.
timed() {
    local label=$1 fmt=$2 input=$3 outdir=$4
    shift 5
    local t status=skipped e=0 u=0 s=0 m=0 bytes_out=0 in_bytes
    in_bytes=$(stat -c %s "$input")
    t=$(cap 900)
    if [ "$t" -le 5 ]; then
        status=skipped
    else
        local i best=""
        for ((i = 0; i < REPEAT; i++)); do
            rm -rf "$outdir" && mkdir -p "$outdir"
            t=$(cap 900)
            if /usr/bin/time -f '%e %U %S %M' -o "$WORK/time.txt" timeout "$t" "$@" >"$WORK/cmd.log" 2>&1; then
                status=ok
                read -r e u s m < <(tail -1 "$WORK/time.txt")
                # Keep the fastest of the repeats (the machine may be shared).
                if [ -z "$best" ] || awk -v a="$e" -v b="$best" 'BEGIN { exit !(a < b) }'; then
                    best=$e
                    echo "$e $u $s $m" >"$WORK/best.txt"
                fi
                bytes_out=$(du -sb "$outdir" | cut -f1)
            elif grep -q "not available" "$WORK/cmd.log"; then
                status=n/a
                break
            else
                status="error: $(tail -1 "$WORK/cmd.log" | tr -d '"\\' | cut -c1-120)"
                break
            fi
        done
        [ "$status" = ok ] && read -r e u s m <"$WORK/best.txt"
        rm -rf "$outdir"
    fi
    printf '{"input":"%s","in_bytes":%s,"format":"%s","tool":"%s","status":"%s","wall_s":%s,"user_s":%s,"sys_s":%s,"max_rss_kb":%s,"out_bytes":%s}\n' \
        "$(basename "$input")" "$in_bytes" "$fmt" "$label" "$status" "$e" "$u" "$s" "$m" "$bytes_out" >>"$RES/remux.jsonl"
    log "remux $(basename "$input") $fmt $label: $status ${e}s"
}

if [ "${BENCH_SKIP_REMUX:-0}" != 1 ]; then
    for variant in "hd 1280x720 2300k" "sd 640x360 740k"; do
        read -r name size vb <<<"$variant"
        [ "$(remaining)" -gt 120 ] || { log "budget: skipping remux $name"; continue; }
        src=$(clip "$name" "$size" "$vb")
        big=$(looped "$src" "$REMUX_MB")
        rm -f "$src"
        o="$WORK/out"
        timed cp copy "$big" "$o" -- cp "$big" "$o/copy.flv"
        for fmt in flv mp4 hls aac; do
            case $fmt in
            flv) ff=(-c copy -f flv "$o/out.flv"); ext=flv ;;
            mp4) ff=(-c copy -f mp4 "$o/out.mp4"); ext=mp4 ;;
            hls) ff=(-c copy -f hls -hls_time 6 -hls_list_size 0 "$o/out.m3u8"); ext=m3u8 ;;
            aac) ff=(-vn -c:a copy -f adts "$o/out.aac"); ext=aac ;;
            esac
            timed reel "$fmt" "$big" "$o" -- "$REEL" remux "$big" -f "$fmt" -o "$o/out.$ext"
            timed ffmpeg "$fmt" "$big" "$o" -- ffmpeg -nostdin -v error -y -i "$big" "${ff[@]}"
            if [ "$fmt" = mp4 ]; then
                timed "ffmpeg +faststart" mp4 "$big" "$o" -- ffmpeg -nostdin -v error -y -i "$big" -c copy -movflags +faststart -f mp4 "$o/out.mp4"
            fi
        done
        rm -f "$big"
    done
fi

# --- (b) live recording --------------------------------------------------------------------
LIVE_FORMATS=("flv")
if [ "${REEL_FMT[hls]}" = 1 ] && [ "${REEL_FMT[mp4]}" = 1 ]; then LIVE_FORMATS+=("flv,hls,mp4"); fi
# BENCH_LIVE_FORMATS="mp4 flv,hls,mp4": the format sets Reel records (nginx always records FLV).
if [ -n "${BENCH_LIVE_FORMATS:-}" ]; then read -r -a LIVE_FORMATS <<<"$BENCH_LIVE_FORMATS"; fi

cat >"$WORK/live.py" <<'PY'
"""Live recording runs: one server (reel or nginx-rtmp) per case, fed by `reel-bench publish`."""
import json, os, re, signal, socket, subprocess, sys, time, datetime, statistics

WORK, RES, REEL, PIDFILE = os.environ["WORK"], os.environ["RES"], os.environ["REEL"], os.environ["PIDFILE"]
REEL_BENCH = os.environ["REEL_BENCH"]
SECONDS_LIVE = int(os.environ["LIVE_SECONDS"])
DEADLINE = float(os.environ["DEADLINE"])
INPUTS = json.loads(os.environ["LIVE_INPUTS"])  # rate label -> FLV the publishers loop
MODULE = os.environ["NGINX_MODULE"]
TICK = os.sysconf("SC_CLK_TCK")
PACING_TICK = os.environ.get("PACING_TICK", "20ms")
INTERVAL = os.environ.get("INTERVAL", "30s")
REEL_SERVER = os.environ.get("REEL_SERVER", "").replace(";", "\n")
REEL_BEFORE_SERVER = os.environ.get("REEL_BEFORE_SERVER", os.environ.get("REEL_SERVER", "")).replace(";", "\n")
REEL_BEFORE = os.environ.get("REEL_BEFORE", "")
PERF_DIR = os.environ.get("PERF_DIR", "")
PAGE_KB = 1


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def tree(pid):
    return [pid] + children(pid)


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def cpu_ns(pids):
    """Nanoseconds on a CPU of each thread of `pids`, by thread id (/proc/PID/task/TID/schedstat):
    the per-second figures need more than the 10 ms of a clock tick (a second of 50 streams is
    2-3 ticks)."""
    out = {}
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    out[int(t)] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return out


def status_kb(pids, key):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def wait_port(port, limit=15):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def flv_av_tags(path):
    n = 0
    with open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"FLV":
        return 0
    off = int.from_bytes(data[5:9], "big") + 4
    while off + 11 <= len(data):
        t = data[off] & 0x1F
        size = int.from_bytes(data[off + 1:off + 4], "big")
        if off + 11 + size > len(data):
            break
        if t in (8, 9):
            n += 1
        off += 11 + size + 4
    return n


def files(d, ext):
    out = []
    for root, dirs, names in os.walk(d):
        dirs[:] = [x for x in dirs if x != ".partial"]
        out += [os.path.join(root, n) for n in names if n.endswith(ext)]
    return out


def open_files(pids, prefix):
    """Paths under `prefix` that the processes `pids` hold open."""
    found = set()
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                t = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if t.startswith(prefix):
                found.add(t)
    return found


def reap(pids, rec, reaped):
    """Removes the recordings the server has finished (not open, not being written, not a
    playlist it rewrites), counting the audio/video tags of FLV files into `reaped` first.
    Keeps what a run holds in tmpfs small: past ~5 GB of tmpfs, writes on this machine get
    several times slower, which would charge whichever case writes the most."""
    held = open_files(pids, rec)
    now = time.time()
    for root, dirs, names in os.walk(rec):
        dirs[:] = [x for x in dirs if x != ".partial"]
        for nm in names:
            path = os.path.join(root, nm)
            if path in held or nm.endswith((".m3u8", ".tmp", ".meta", ".part")):
                continue
            try:
                if now - os.path.getmtime(path) < 2:
                    continue
                if nm.endswith(".flv"):
                    reaped[path] = flv_av_tags(path)
                os.remove(path)
            except OSError:
                pass


def pct(v, p):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def register(pid):
    with open(PIDFILE, "a") as f:
        f.write(f"{pid}\n")


def stop(proc, sig=signal.SIGTERM, limit=30):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_case(server, formats, n, rate):
    d = os.path.join(WORK, f"live-{server}-{formats.replace(',', '+')}-{n}-{rate}")
    rec = os.path.join(d, "rec")
    os.makedirs(rec, exist_ok=True)
    port = free_port()
    log = os.path.join(d, "server.log")
    if server == "nginx":
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""load_module {MODULE};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
user root;
pid {d}/nginx.pid;
error_log {log} warn;
events {{ worker_connections 65536; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
            record all;
            record_path {rec};
            record_interval {INTERVAL};
            record_unique on;
        }}
    }}
}}
""")
        cmd = ["nginx", "-p", d, "-c", conf, "-e", log]
    else:
        conf = os.path.join(d, "reel.toml")
        fmts = ", ".join(f'"{x}"' for x in formats.split(","))
        with open(conf, "w") as f:
            f.write(f"""[server]
rtmp_listen = "127.0.0.1:{port}"
http_listen = "127.0.0.1:{free_port()}"
data_dir = "{d}/data"
{REEL_BEFORE_SERVER if server == "reel-before" else REEL_SERVER}
[storage.local]
kind = "fs"
root = "{rec}"
[template.default]
formats = [{fmts}]
interval = "{INTERVAL}"
storage = "local"
[[rule]]
template = "default"
""")
        cmd = [REEL_BEFORE if server == "reel-before" else REEL, "serve", "--config", conf]
    env = dict(os.environ, REEL_LOG="info")
    srv = subprocess.Popen(cmd, cwd=d, stdout=subprocess.DEVNULL, stderr=open(log + ".stderr", "w") if server == "nginx" else open(log, "w"), env=env)
    register(srv.pid)
    result = {"server": server, "formats": formats, "streams": n, "rate": rate, "seconds": SECONDS_LIVE}
    try:
        if not wait_port(port):
            result["error"] = "server did not start: " + open(log + (".stderr" if server == "nginx" else "")).read()[-300:]
            return result
        time.sleep(1.0)
        idle_rss = status_kb(tree(srv.pid), "VmRSS")
        # Warm-up: one stream, published for 3 s and closed before the measurement, so that
        # the per-stream figures do not carry what a server's first publish touches once
        # (code pages, threads and pools started on demand). Its cost is reported apart.
        subprocess.run([REEL_BENCH, "publish", "--url", f"rtmp://127.0.0.1:{port}/live/warmup", "--streams", "1",
                        "--input", INPUTS[rate], "--duration", "3s", "--ramp", "0s", "--tick", PACING_TICK],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        time.sleep(2.0)
        pids = tree(srv.pid)
        base_rss = status_kb(pids, "VmRSS")
        cpu0 = cpu_ticks(pids)
        perf = None
        if PERF_DIR and server != "nginx":
            os.makedirs(PERF_DIR, exist_ok=True)
            perf_name = os.path.join(PERF_DIR, f"{server}-{formats.replace(',', '+')}-{rate}-{n}")
            perf = subprocess.Popen(["perf", "record", "-q", "-F", "499", "-g", "-p", str(srv.pid), "-o", perf_name + ".data"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            register(perf.pid)
        ramp = 1 if n <= 10 else min(10, max(2, n // 50))
        budget = DEADLINE - time.time()
        need = SECONDS_LIVE + ramp + 45
        if budget < need:
            result["error"] = f"skipped: {int(budget)} s of budget left, needs {need}"
            return result
        bench_time = os.path.join(d, "bench.time")
        bench_cmd = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", bench_time, "timeout", str(SECONDS_LIVE + ramp + 40),
                     REEL_BENCH, "publish", "--url", f"rtmp://127.0.0.1:{port}/live/s_{{n}}", "--streams", str(n),
                     "--input", INPUTS[rate], "--duration", f"{SECONDS_LIVE}s", "--ramp", f"{ramp}s", "--tick", PACING_TICK]
        bench = subprocess.Popen(bench_cmd, stdout=subprocess.PIPE, stderr=open(os.path.join(d, "bench.log"), "w"))
        register(bench.pid)
        t_start = time.time()
        peak = base_rss
        open_seen, closed_at = {}, {}
        last_rss = 0.0
        reaped, last_reap = {}, time.time()
        # CPU per second of the run: does a cut (every INTERVAL) make a spike?
        seconds, last_sec = [], t_start
        rss_minutes = []
        # Sample memory every 250 ms; near the end (nginx) watch the worker's open record files.
        while True:
            done = bench.poll() is not None
            now = time.time()
            if now - last_rss >= 0.25:
                pids = tree(srv.pid)
                rss_now = status_kb(pids, "VmRSS")
                peak = max(peak, rss_now)
                last_rss = now
                # RSS once a minute: does it stay flat over a long run?
                if now - t_start >= 60 * (len(rss_minutes) + 1):
                    rss_minutes.append(rss_now)
            if now - last_sec >= 1.0:
                seconds.append((now, cpu_ns(tree(srv.pid))))
                last_sec = now
            if server == "nginx" and now - t_start >= SECONDS_LIVE - 1:
                cur = open_files(pids, rec)
                for t in cur:
                    open_seen[t] = now
                for t in list(open_seen):
                    if t not in cur and t not in closed_at:
                        closed_at[t] = now
            if now - last_reap >= 5:
                reap(tree(srv.pid), rec, reaped)
                last_reap = now
            if done:
                break
            time.sleep(0.02 if server == "nginx" and now - t_start >= SECONDS_LIVE - 1 else 0.1)
        out = bench.stdout.read().decode(errors="replace").strip().splitlines()
        report = json.loads(out[-1]) if out else {}
        # Wait for every file to be closed.
        end = time.time() + 40
        reel_closed = {}
        while time.time() < end:
            if server == "nginx":
                cur = open_files(tree(srv.pid), rec)
                now = time.time()
                for t in list(open_seen):
                    if t not in cur and t not in closed_at:
                        closed_at[t] = now
                if not cur:
                    break
            else:
                text = open(log).read()
                reel_closed = {}
                for m in re.finditer(r"^(\S+Z)\s+INFO file closed .*?stream=(\S+) format=\"?(\w+)", text, re.M):
                    ts = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                    if m.group(2) != "warmup":
                        reel_closed[(m.group(2), m.group(3))] = ts
                if len(reel_closed) >= report.get("published", n) * len(formats.split(",")):
                    break
            time.sleep(0.05)
        peak = max(peak, status_kb(tree(srv.pid), "VmRSS"))
        hwm = status_kb(tree(srv.pid), "VmHWM")
        cpu1 = cpu_ticks(tree(srv.pid))
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
            with open(perf_name + ".txt", "w") as txt:
                subprocess.run(["perf", "report", "-q", "-i", perf_name + ".data", "--no-children", "--sort", "dso,symbol"],
                               stdout=txt, stderr=subprocess.DEVNULL, timeout=300)
        stop(srv, signal.SIGQUIT if server == "nginx" else signal.SIGTERM)
        # Per-second CPU while every publisher sends (after the ramp, before the first ends).
        # (A thread started meanwhile counts from zero; one that ended loses its last second.)
        steady = [sum(v - a[1].get(t, 0) for t, v in b[1].items()) / 1e9 / max(b[0] - a[0], 1e-3)
                  for a, b in zip(seconds, seconds[1:])
                  if a[0] >= t_start + ramp + 2 and b[0] <= t_start + SECONDS_LIVE]
        sec_median = statistics.median(steady) if steady else None
        sec_max = max(steady) if steady else None
        # Frames written, per stream.
        per = report.get("frames_per_stream", [])
        unpub = report.get("unpublished_at_ms", [])
        written = []
        lat = []
        for i in range(len(per)):
            name = f"s_{i}"
            if server == "nginx":
                fl = [os.path.join(rec, f) for f in os.listdir(rec)
                      if f == name + ".flv" or (f.startswith(name + "-") and f.endswith(".flv"))]
                gone = [p for p in reaped if os.path.dirname(p) == rec and
                        (os.path.basename(p) == name + ".flv" or os.path.basename(p).startswith(name + "-"))]
                # The last file (unique names carry the start time) is the one the unpublish closes.
                c = closed_at.get(max(fl)) if fl else None
            else:
                fl = files(os.path.join(rec, "live", name), ".flv")
                gone = [p for p in reaped if p.startswith(os.path.join(rec, "live", name) + os.sep)]
                cs = [v for (s, _), v in reel_closed.items() if s == name]
                c = max(cs) if cs and len(cs) == len(formats.split(",")) else None
            written.append(sum(flv_av_tags(f) for f in fl) + sum(reaped[p] for p in gone))
            if c is not None and i < len(unpub) and unpub[i]:
                lat.append(c * 1000 - unpub[i])
        bt = open(bench_time).read().split() if os.path.exists(bench_time) else []
        try:
            bench_cpu = float(bt[-3]) + float(bt[-2])
        except (ValueError, IndexError):
            bench_cpu = None
        result.update({
            "published": report.get("published"),
            "frames_sent": report.get("frames_sent") or 0,
            "frames_written": sum(written),
            "streams_mismatched": sum(1 for a, b in zip(per, written) if a != b),
            "delta_min": min((b - a for a, b in zip(per, written)), default=0),
            "delta_max": max((b - a for a, b in zip(per, written)), default=0),
            "errors": report.get("errors", [])[:5],
            "error_count": len(report.get("errors", [])),
            "cpu_s": (cpu1 - cpu0) / TICK,
            "idle_rss_kb": idle_rss,
            "base_rss_kb": base_rss,
            "peak_rss_kb": peak,
            "hwm_kb": hwm,
            "close_ms_p50": pct(lat, 50),
            "close_ms_p99": pct(lat, 99),
            "close_count": len(lat),
            "bench_cpu_s": bench_cpu,
            "bench_wall_s": report.get("seconds"),
            "mbit_s_per_stream": (report.get("bytes_sent") or 0) * 8 / 1e6 / SECONDS_LIVE / n,
            "write_ms_p99": report.get("write_ms_p99"),
            "write_ms_max": report.get("write_ms_max"),
            "cpu_second_median": sec_median,
            "rss_minutes_kb": rss_minutes,
            "cpu_second_max": sec_max,
            "cpu_per_second": [round(x, 3) for x in steady],
        })
        return result
    finally:
        stop(srv, signal.SIGKILL, 5) if srv.poll() is None else None
        subprocess.run(["rm", "-rf", rec])


def main():
    cases = json.loads(os.environ["CASES"])
    with open(os.path.join(RES, "live.jsonl"), "a") as out:
        for server, formats, n, rate in cases:
            if time.time() > DEADLINE - 30:
                r = {"server": server, "formats": formats, "streams": n, "rate": rate, "error": "skipped: budget"}
            else:
                print(f"[live] {server} {formats} N={n} {rate}", file=sys.stderr, flush=True)
                r = run_case(server, formats, n, rate)
            print(f"[live] {json.dumps(r)[:400]}", file=sys.stderr, flush=True)
            if r.get("cpu_per_second"):
                print(f"[live] CPU per second: {r['cpu_per_second']}", file=sys.stderr, flush=True)
            out.write(json.dumps(r) + "\n")
            out.flush()


main()
PY

if [ "${BENCH_SKIP_LIVE:-0}" != 1 ]; then
    # ~500 kbit/s: 436k video + 64k audio, 640x360; ~2.5 Mbit/s: 2436k + 64k, 1280x720.
    # Looped by the publishers.
    LIVE_INPUTS="{\"500k\": \"$(clip live 640x360 436k 60)\""
    [ -n "$STREAMS_HD" ] && LIVE_INPUTS+=", \"2.5M\": \"$(clip live-hd 1280x720 2436k 60)\""
    LIVE_INPUTS+="}"
    cases="["
    sep=""
    for spec in $(for n in $STREAMS; do echo "$n:500k"; done; for n in $STREAMS_HD; do echo "$n:2.5M"; done); do
        n=${spec%%:*} rate=${spec#*:}
        if [ "$HAVE_NGINX" = 1 ]; then cases+="$sep[\"nginx\",\"flv\",$n,\"$rate\"]"; sep=","; fi
        for fm in "${LIVE_FORMATS[@]}"; do
            cases+="$sep[\"reel\",\"$fm\",$n,\"$rate\"]"; sep=","
            if [ -n "${BENCH_REEL_BEFORE:-}" ]; then cases+="$sep[\"reel-before\",\"$fm\",$n,\"$rate\"]"; fi
        done
    done
    cases+="]"
    log "live cases: $cases"
    WORK=$WORK RES=$RES REEL=$REEL REEL_BENCH=$REEL_BENCH PIDFILE=$PIDFILE LIVE_SECONDS=$LIVE_SECONDS LIVE_INPUTS=$LIVE_INPUTS PACING_TICK=$TICK \
        INTERVAL=$INTERVAL REEL_BEFORE=${BENCH_REEL_BEFORE:-} PERF_DIR=${BENCH_PERF_DIR:-} REEL_SERVER=${BENCH_REEL_SERVER:-} REEL_BEFORE_SERVER=${BENCH_REEL_BEFORE_SERVER-${BENCH_REEL_SERVER:-}} NGINX_MODULE=$NGINX_MODULE DEADLINE=$((T0 + BUDGET - 20)) CASES=$cases \
        timeout "$(cap "$BUDGET")" python3 "$WORK/live.py" || log "live runner ended early (exit $?)"
fi

# --- (c) plugins ---------------------------------------------------------------------------
PLUGIN_OUT="$RES/plugins.txt"
pb=$(ls "$ROOT"/host/benches/policy.rs "$ROOT"/host/benches/*plugin*.rs 2>/dev/null | head -1 || true)
pe=$(ls "$ROOT"/host/examples/*plugin*.rs 2>/dev/null | head -1 || true)
if [ "${BENCH_SKIP_PLUGINS:-0}" = 1 ]; then
    echo "n/a" >"$PLUGIN_OUT"
elif [ -n "$pb" ] && [ "$(remaining)" -gt 60 ]; then
    (cd "$ROOT" && timeout "$(cap 300)" cargo bench -q -p reel --bench "$(basename "$pb" .rs)") >"$PLUGIN_OUT" 2>&1 || true
elif [ -n "$pe" ] && [ "$(remaining)" -gt 60 ]; then
    (cd "$ROOT" && timeout "$(cap 300)" cargo run -q --release -p reel --example "$(basename "$pe" .rs)") >"$PLUGIN_OUT" 2>&1 || true
else
    echo "n/a" >"$PLUGIN_OUT"
fi

# --- report --------------------------------------------------------------------------------
MACHINE_CPU=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MACHINE_MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
NGINX_VER=$( (nginx -v 2>&1 || true) | sed 's/.*nginx\///')
RTMP_VER=$(dpkg-query -W -f '${Version}' libnginx-mod-rtmp 2>/dev/null || echo "?")
FFMPEG_VER=$(ffmpeg -version 2>/dev/null | head -1 | awk '{print $3}')
REEL_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo "?")
RES=$RES OUT=$OUT CMDLINE=$CMDLINE NPROC=$(nproc) MACHINE_CPU=$MACHINE_CPU MACHINE_MEM=$MACHINE_MEM \
    NGINX_VER=$NGINX_VER RTMP_VER=$RTMP_VER FFMPEG_VER=$FFMPEG_VER REEL_REV=$REEL_REV KERNEL=$(uname -r) \
    ELAPSED=$(($(date +%s) - T0)) LIVE_SECONDS=$LIVE_SECONDS PACING_TICK=$TICK INTERVAL=$INTERVAL python3 - <<'PY'
import json, os

res, out = os.environ["RES"], os.environ["OUT"]


def lines(name):
    p = os.path.join(res, name)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []


def f(v, d=1):
    return "–" if v is None else f"{v:,.{d}f}"


md = [
    "# Benchmarks",
    "",
    "Measured by `bench/run.sh` (see the script's header for its settings). Every ratio compares",
    "Reel with the peer measured **in the same run, on the same machine**. Inputs, outputs and",
    "recordings live in tmpfs (`/dev/shm`), so the figures are CPU and memory costs, not disk speed.",
    "The machine may be shared with other work while this runs: treat differences under ~20% as noise.",
    "",
    f"- machine: {os.environ['NPROC']} CPUs, {os.environ['MACHINE_CPU']}, {os.environ['MACHINE_MEM']} RAM, Linux {os.environ['KERNEL']}",
    f"- reel {os.environ['REEL_REV']} (release build), ffmpeg {os.environ['FFMPEG_VER']}, nginx {os.environ['NGINX_VER']} with libnginx-mod-rtmp {os.environ['RTMP_VER']}",
    f"- command: `{os.environ['CMDLINE']}` ({os.environ['ELAPSED']} s)",
    f"- date: {__import__('datetime').datetime.now(__import__('datetime').timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    "",
    "## Offline remux",
    "",
    "`reel remux IN -f F -o OUT` against `ffmpeg -v error -i IN -c copy -f F OUT` (hls: `-hls_time 6",
    "-hls_list_size 0`; aac: `-vn -c:a copy -f adts`; mp4 also with `-movflags +faststart`), and `cp`",
    "as the physical limit. MB/s = input bytes / wall time. CPU = user + sys. Inputs: testsrc2 + AAC",
    "encoded once with x264 and looped with `-stream_loop -c copy`. Each command runs BENCH_REPEAT",
    "times; the fastest run is shown. n/a: not supported by this build.",
    "",
    "| input | format | tool | wall s | MB/s | CPU s | max RSS MB | out MB | CPU vs ffmpeg | speed vs ffmpeg |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
]
rows = lines("remux.jsonl")
by = {}
for r in rows:
    by[(r["input"], r["format"], r["tool"])] = r
for r in rows:
    if r["status"] != "ok":
        md.append(f"| {r['input']} ({r['in_bytes']/1e6:,.0f} MB) | {r['format']} | {r['tool']} | {r['status']} | | | | | | |")
        continue
    wall = float(r["wall_s"]); cpu = float(r["user_s"]) + float(r["sys_s"])
    mbs = r["in_bytes"] / 1e6 / max(wall, 1e-3)
    ratio_cpu = ratio_speed = ""
    peer = by.get((r["input"], r["format"], "ffmpeg"))
    if r["tool"] == "reel" and peer and peer["status"] == "ok":
        pcpu = float(peer["user_s"]) + float(peer["sys_s"])
        ratio_cpu = f"{cpu / max(pcpu, 1e-3):.2f}×"
        ratio_speed = f"{float(peer['wall_s']) / max(wall, 1e-3):.2f}×"
    md.append(f"| {r['input']} ({r['in_bytes']/1e6:,.0f} MB) | {r['format']} | {r['tool']} | {wall:.2f} | {mbs:,.0f} | {cpu:.2f} | {int(r['max_rss_kb'])/1024:,.0f} | {r['out_bytes']/1e6:,.0f} | {ratio_cpu} | {ratio_speed} |")
if not rows:
    md.append("| (not run) | | | | | | | | | |")
md += [
    "",
    "CPU vs ffmpeg: Reel's CPU seconds / ffmpeg's (lower is better). Speed vs ffmpeg: ffmpeg's wall",
    "time / Reel's (higher is better).",
    "",
    "## Live recording",
    "",
    f"Each server records every stream in the formats listed; `reel-bench publish` sends an H.264 + AAC",
    f"stream (rate 500k: 640x360 at ~500 kbit/s; 2.5M: 1280x720 at ~2.5 Mbit/s), in real time, for {os.environ['LIVE_SECONDS']} s per stream (starts spread",
    "over a short ramp). Server CPU = utime + stime of the server's processes (nginx: master +",
    "worker) over the run, from `/proc/PID/stat`. CPU/stream-min = server CPU ms per stream per",
    "minute of media. RSS/stream = (peak VmRSS sampled every 250 ms - RSS before the run) / N, where",
    "\"before the run\" follows a warm-up: one stream published for 3 s and closed, so that what a",
    "server's first publish touches once (code pages, threads started on demand) is not counted per",
    "stream; the notes give that first-publish cost (\"warm-up +KB\"). Frames =",
    "audio + video tags: sent (bench report) and found in the recorded files. Close = time from the",
    "publisher's unpublish to the file being closed (Reel: its `file closed` log line; nginx: the",
    "worker's file descriptor gone, polled every 20 ms). Bench CPU = the publisher's own user + sys.",
    f"Each publisher writes once per {os.environ['PACING_TICK']} tick (everything due in one write, like an",
    "encoder writing each frame as it comes out); most of both sides' CPU is per-write kernel work",
    "(loopback TCP and wakeups), so a longer tick makes both the server and the publisher cheaper.",
    "nginx-rtmp writes the AAC sequence header twice into each file (+1 tag per stream); no frame is lost.",
    f"Files are cut every {os.environ.get('INTERVAL', '30s')} (reel `interval`, nginx `record_interval` with `record_unique on`).",
    "Write p99 = the 99th percentile (and max) of the time a publisher's write waited for the",
    "socket, over every write of every publisher. Peak s / median s = the server's CPU in its",
    "busiest second over its median second, while every publisher sends (cuts included), from",
    "each thread's time on a CPU in nanoseconds (`/proc/PID/task/TID/schedstat`), not clock ticks.",
    "reel-before: the previous build, measured in the same run.",
    "",
    "| server | formats | rate | N | server CPU s | CPU ms / stream-min | vs nginx | RSS / stream KB | vs nginx | frames sent | frames written | close p50 ms | close p99 ms | write p99 (max) ms | peak s / median s | bench CPU s | notes |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
]
live = lines("live.jsonl")
nginx = {(r["streams"], r.get("rate", "500k")): r for r in live if r["server"] == "nginx" and "cpu_s" in r}
for r in live:
    n = r["streams"]
    if "cpu_s" not in r:
        md.append(f"| {r['server']} | {r['formats']} | {r.get('rate', '500k')} | {n} | | | | | | | | | | | | | {r.get('error', '')} |")
        continue
    minutes = n * r["seconds"] / 60
    per_min = r["cpu_s"] * 1000 / max(minutes, 1e-9)
    rss = (r["peak_rss_kb"] - r["base_rss_kb"]) / n
    vs_cpu = vs_rss = ""
    p = nginx.get((n, r.get("rate", "500k")))
    if r["server"] != "nginx" and p:
        vs_cpu = f"{r['cpu_s'] / max(p['cpu_s'], 1e-3):.2f}×"
        prss = (p["peak_rss_kb"] - p["base_rss_kb"]) / n
        vs_rss = f"{rss / max(prss, 1e-3):.2f}×"
    sm, sx = r.get("cpu_second_median"), r.get("cpu_second_max")
    peak = f"{sx / sm:.2f} ({sx:.2f}/{sm:.2f})" if sm and sx else "–"
    notes = []
    if r.get("published") != n:
        notes.append(f"{r.get('published')} of {n} published")
    if r.get("streams_mismatched"):
        d0, d1 = r.get("delta_min", 0), r.get("delta_max", 0)
        delta = f"{d0:+d}" if d0 == d1 else f"{d0:+d}..{d1:+d}"
        notes.append(f"written − sent = {delta} per stream on {r['streams_mismatched']} streams")
    if r.get("error_count"):
        notes.append(f"{r['error_count']} bench errors: {'; '.join(r['errors'][:2])[:160]}")
    if "idle_rss_kb" in r:
        notes.append(f"warm-up +{r['base_rss_kb'] - r['idle_rss_kb']:,} KB")
    mins = r.get("rss_minutes_kb") or []
    if len(mins) >= 3:
        notes.append("RSS/stream KB by minute: " + ", ".join(f"{(m - r['base_rss_kb']) / n:,.0f}" for m in mins))
    if r.get("close_count", 0) < n:
        notes.append(f"close time known for {r.get('close_count', 0)} streams")
    md.append(
        f"| {r['server']} | {r['formats']} | {r.get('rate', '500k')} | {n} | {r['cpu_s']:.2f} | {per_min:,.0f} | {vs_cpu} | {rss:,.0f} | {vs_rss} | "
        f"{r['frames_sent']:,} | {r['frames_written']:,} | {f(r['close_ms_p50'], 0)} | {f(r['close_ms_p99'], 0)} | "
        f"{f(r.get('write_ms_p99'), 1)} ({f(r.get('write_ms_max'), 0)}) | {peak} | {f(r['bench_cpu_s'], 2)} | {'; '.join(notes)} |"
    )
if not live:
    md.append("| (not run) | | | | | | | | | | | | | | | | |")
md += [
    "",
    "vs nginx: Reel / nginx-rtmp at the same N and rate (lower is better).",
    "",
    "## Plugins",
    "",
]
pl = open(os.path.join(res, "plugins.txt")).read().strip() if os.path.exists(os.path.join(res, "plugins.txt")) else "n/a"
if pl == "n/a":
    md.append("n/a: no plugin decision benchmark in this build.")
else:
    # cargo's own status lines (Compiling, Finished, Running) are not results.
    keep = [l for l in pl.splitlines() if l.split()[:1] not in (["Compiling"], ["Finished"], ["Running"], ["Blocking"])]
    md += ["```", "\n".join(keep[-30:]), "```"]
md.append("")
with open(out, "w") as fo:
    fo.write("\n".join(md))
print(f"wrote {out}")
PY
log "done in $(($(date +%s) - T0)) s"
