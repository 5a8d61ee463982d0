#!/usr/bin/env bash
# Every GPU figure of issue 24 in one command, on a Getty subset of at most 60 MiB of photos
# (bench/getty_subset.py), in under 8 minutes on one GPU:
#   1. the device (nvidia-smi, torch);
#   2. in-process on the device (bench/speed_ab.py): seconds per query and per stage, host CPU
#      per query split into the model forward passes and the rest, resident memory;
#   3. through the real queue (bench/throughput.py: Redis, SQLite, real workers): queries/s,
#      stage seconds, host CPU per query, GPU utilisation and memory (nvidia-ml-py) with one
#      process and with one process per core (workers/layout.py), fast profile, then the fine
#      stage on every query (accurate profile, escalate_below=1). The map stores its pair frames
#      first (core/pairframes.py), as a queued build does by default.
# Usage: bench/gpu_run.sh [--device cuda|cpu] [--queries N] [--positions P]
#   --device cpu is the smoke mode: the same steps on the CPU. How the script was checked without
#   a GPU: `bench/gpu_run.sh --device cpu --queries 4 --positions 20` ran every step to the end
#   on a busy 2-core CPU in about 30 minutes (the fine set's ALIKED on the CPU is most of it).
# Needs: the Getty set (FEATURELOC_GETTY_DIR), Redis at $REDIS_URL or redis-server on the PATH
# (a private one is started on port 6391), nvidia-ml-py for the GPU samples.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
QUERIES=80
POSITIONS=250
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --queries) QUERIES=$2; shift 2 ;;
    --positions) POSITIONS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=$(realpath -m "${OUT:-bench/out/gpu-run-$DEVICE}")
SUB=$OUT/getty
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
CORES=$($PY -c "from workers.layout import cores; print(cores())")
START=$SECONDS
mkdir -p "$OUT"

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY -c "import pynvml" 2>/dev/null && echo "nvidia-ml-py present" || echo "nvidia-ml-py absent: no GPU utilisation figures"
echo "host cores: $CORES"

echo "== map subset"
[ -f "$SUB/queries.csv" ] || $PY -m bench.getty_subset --positions "$POSITIONS" --out "$SUB"
MIB=$(du -sm "$SUB/images" | cut -f1)
echo "subset photos: $MIB MiB"
if [ "$MIB" -gt 60 ]; then echo "subset over 60 MiB: lower --positions" >&2; exit 1; fi

echo "== redis"
if ! $PY -c "import redis, sys; redis.Redis.from_url(sys.argv[1]).ping()" "$REDIS_URL" 2>/dev/null; then
  command -v redis-server >/dev/null || { echo "no Redis at $REDIS_URL and no redis-server" >&2; exit 1; }
  redis-server --port 6391 --save "" --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!
  trap 'kill $REDIS_PID 2>/dev/null || true' EXIT
  REDIS_URL=redis://127.0.0.1:6391/0
  sleep 1
fi
echo "redis: $REDIS_URL"

TP=(--getty "$SUB" --references 0 --device "$DEVICE" --redis "$REDIS_URL" --workers 1)
echo "== build the map (and its fine set), then the queue: 1 process, fast profile"
$PY -m bench.throughput "${TP[@]}" --fine --queries "$QUERIES" --concurrency 1 --out "$OUT/q1"
MAP=$(ls -d "$OUT"/q1/throughput/maps/tp-*)
echo "== the queue: $CORES processes (one per core), fast profile"
$PY -m bench.throughput "${TP[@]}" --map-from "$MAP" --queries "$((QUERIES * 2))" \
  --concurrency "$CORES" --out "$OUT/qn"
echo "== the queue: $CORES processes, the fine stage on every query"
$PY -m bench.throughput "${TP[@]}" --map-from "$MAP" --queries "$QUERIES" \
  --concurrency "$CORES" --option profile=accurate --option 'fine_conf={"escalate_below": 1}' \
  --out "$OUT/qf"

echo "== in-process on $DEVICE: one process, fast then accurate (every query escalates)"
LIMIT=$((QUERIES < 40 ? QUERIES : 40))
$PY -m bench.speed_ab --maps "$(dirname "$MAP")" --map "$(basename "$MAP")" --getty "$SUB" \
  --device "$DEVICE" --limit "$LIMIT" --out "$OUT/ab"
$PY -m bench.speed_ab --maps "$(dirname "$MAP")" --map "$(basename "$MAP")" --getty "$SUB" \
  --device "$DEVICE" --limit "$LIMIT" --option profile=accurate \
  --option 'fine_conf={"escalate_below": 1}' --out "$OUT/abf"
echo "== done in $((SECONDS - START)) s; figures under $OUT"
