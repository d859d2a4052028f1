#!/usr/bin/env bash
# What an idle node costs: `reel serve` with the embedded defaults' shape (local disk, SQLite
# catalog, a recording rule) and no publisher, against nginx-rtmp with `record all`, each for
# BENCH_SECONDS (60). Reports CPU (utime + stime, every thread or process of the server) and
# wake-ups (voluntary + involuntary context switches) per minute.
#
# Settings (environment): BENCH_SECONDS=60, BENCH_REEL_BEFORE=path (another build of `reel`,
# measured beside).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${BENCH_SECONDS:-60}
WORK=$(mktemp -d /tmp/reel-bench-idle.XXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
(cd "$ROOT" && cargo build --release -q -p reel)
REEL="${CARGO_TARGET_DIR:-$ROOT/target}/release/reel"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# CPU ticks and context switches of a process and its children, threads included.
sample() { # PID...
    local t=0 c=0 p task
    for p in "$@"; do
        for task in /proc/"$p"/task/*; do
            [ -r "$task/stat" ] || continue
            t=$((t + $(awk '{print $14 + $15}' "$task/stat")))
            c=$((c + $(awk '/ctxt_switches/ {s += $2} END {print s}' "$task/status")))
        done
    done
    echo "$t $c"
}

measure() { # NAME PID...
    local name=$1
    shift
    sleep 5 # past start-up
    local a b
    a=$(sample "$@")
    sleep "$SECS"
    b=$(sample "$@")
    python3 - "$name" "$SECS" $a $b <<'PY'
import json, os, sys
name, secs, t0, c0, t1, c1 = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:])
hz = os.sysconf("SC_CLK_TCK")
print(json.dumps({"case": name, "cpu_ms_per_min": round((t1 - t0) * 1000 / hz * 60 / secs, 1),
                  "wakeups_per_min": round((c1 - c0) * 60 / secs)}))
PY
}

reel_case() { # NAME BINARY
    local d="$WORK/$1" pid
    mkdir -p "$d"
    cat >"$d/reel.toml" <<EOF
[server]
rtmp_listen = "127.0.0.1:$(port)"
http_listen = "127.0.0.1:$(port)"
data_dir = "$d/data"
[storage.local]
kind = "fs"
root = "$d/rec"
[template.default]
formats = ["flv"]
interval = "30m"
storage = "local"
[[rule]]
template = "default"
EOF
    REEL_LOG=warn "$2" serve --config "$d/reel.toml" >"$d/reel.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    measure "$1" "$pid"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

reel_case reel "$REEL"
if [ -n "${BENCH_REEL_BEFORE:-}" ]; then
    reel_case reel-before "$BENCH_REEL_BEFORE"
fi
NGINX_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so
if command -v nginx >/dev/null && [ -f "$NGINX_MODULE" ]; then
    d="$WORK/nginx"
    mkdir -p "$d/rec" "$d/logs"
    cat >"$d/nginx.conf" <<EOF
load_module $NGINX_MODULE;
daemon off;
master_process on;
worker_processes auto;
pid $d/nginx.pid;
error_log $d/logs/error.log;
events { worker_connections 1024; }
rtmp {
    server {
        listen 127.0.0.1:$(port);
        application live {
            live on;
            record all;
            record_path $d/rec;
        }
    }
}
EOF
    nginx -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" &
    pid=$!
    PIDS+=("$pid")
    sleep 1
    measure nginx "$pid" $(pgrep -P "$pid" | tr '\n' ' ')
    kill -QUIT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
fi
