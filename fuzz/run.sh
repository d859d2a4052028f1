#!/usr/bin/env bash
# Fuzzes every parser of outside bytes for a bounded time each, seeded from media ffmpeg makes,
# and prints the executions and any crash per target.
#   FUZZ_SECONDS=60 bash fuzz/run.sh [target ...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets it
# pass the sanitizer flags. Crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(handshake session amf0 flv_tags codec_config remux mp4_recover)
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is needed: cargo install cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1

# Seeds: a short FLV with H.264 (B-frames) + AAC, and the pieces each target reads.
SEEDS=$(mktemp -d)
trap 'rm -rf "$SEEDS"' EXIT
ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=160x120:rate=10 -f lavfi -i sine=sample_rate=22050 \
    -t 1 -c:v libx264 -preset ultrafast -bf 2 -g 5 -c:a aac -b:a 32k -f flv "$SEEDS/av.flv"
ffmpeg -nostdin -v error -y -i "$SEEDS/av.flv" -c copy -movflags frag_keyframe+empty_moov -f mp4 "$SEEDS/av.mp4"
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    case $t in
    flv_tags | remux) cp "$SEEDS/av.flv" "corpus/$t/seed-av.flv" ;;
    mp4_recover) cp "$SEEDS/av.mp4" "corpus/$t/seed-av.mp4" ;;
    session | handshake) head -c 4096 "$SEEDS/av.flv" >"corpus/$t/seed-flv-head" ;;
    amf0) printf '\x02\x00\x0aonMetaData\x08\x00\x00\x00\x01\x00\x08duration\x00\x40\x24\x00\x00\x00\x00\x00\x00\x00\x00\x09' >"corpus/$t/seed-meta" ;;
    codec_config) printf '\x01\x64\x00\x0d\xff\xe1\x00\x04\x67\x64\x00\x0d\x01\x00\x02\x68\xeb' >"corpus/$t/seed-avcc" ;;
    esac
done

printf '%-14s %12s %8s %s\n' target executions seconds result
for t in "${TARGETS[@]}"; do
    log=$(mktemp)
    if cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH: $(grep -m1 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | cut -c1-120)"
    fi
    runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')
    printf '%-14s %12s %8s %s\n' "$t" "${runs:-?}" "$SECONDS_EACH" "$result"
    rm -f "$log"
done
