#!/usr/bin/env bash
# make bench: kgentsd's benchmarks, as recorded in docs/benchmarks.md.
#
#   1. Go micro-benchmarks of the hot paths (-benchmem, BENCHCOUNT runs each),
#      summarised with benchstat; BENCH_BASE=<old go.txt> compares against an
#      earlier run.
#   2. Fan-out: BenchmarkWatchFanout (hub vs a JetStream consumer per watcher)
#      and BenchmarkWatchLatency (1, 100, 1,000 watchers, end to end).
#   3. The REST load benchmark: wrk at LOAD_CONNS connections for LOAD_SECONDS
#      against POST /v1/soul/dialogue, first on a bare grpc-gateway
#      pass-through (the baseline), then on kgentsd with its full chain.
#
# Everything lands in $BENCH_OUT (default bench-results/). Only the Go
# toolchain is needed; wrk is installed from Debian's packages if missing.
# BENCH_ONLY=go|watch|load runs one part.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
OUT=${BENCH_OUT:-bench-results}
BENCHTIME=${BENCHTIME:-1s}
BENCHCOUNT=${BENCHCOUNT:-6}
LOAD_SECONDS=${LOAD_SECONDS:-20}
LOAD_CONNS=${LOAD_CONNS:-32}
ONLY=${BENCH_ONLY:-all}
mkdir -p "$OUT"

log() { printf '\n== %s\n' "$*" >&2; }
part() { [[ $ONLY == all || $ONLY == "$1" ]]; }

# ---- 1. Go benchmarks -------------------------------------------------------
if part go; then
	log "Go benchmarks (count=$BENCHCOUNT benchtime=$BENCHTIME) → $OUT/go.txt"
	: >"$OUT/go.txt"
	gobench() { # package regex [extra go test flags...]
		local pkg=$1 re=$2
		shift 2
		$GO test -run '^$' -bench "$re" -benchmem -count "$BENCHCOUNT" -benchtime "$BENCHTIME" "$@" "$pkg" | tee -a "$OUT/go.txt"
	}
	gobench ./apijson/ .
	gobench ./soul/ .
	gobench ./agentese/ .
	gobench ./interceptors/metering/ .
	gobench ./server/ 'BenchmarkDialogue|BenchmarkSSEWrite|BenchmarkChainOverhead'
	# Throughput benchmarks move a fixed number of messages per run.
	BENCHTIME=200000x gobench ./streaming/ 'BenchmarkPublish|BenchmarkSpool|BenchmarkSpan|BenchmarkRawPublish'
	BENCHTIME=200000x BENCHCOUNT=3 gobench ./billing/ .
	$GO tool -modfile=tools/go.mod benchstat "$OUT/go.txt" >"$OUT/go-summary.txt"
	if [[ -n ${BENCH_BASE:-} ]]; then
		$GO tool -modfile=tools/go.mod benchstat "$BENCH_BASE" "$OUT/go.txt" | tee "$OUT/go-compare.txt"
	fi
	echo "benchstat summary: $OUT/go-summary.txt"
fi

# ---- 2. Fan-out latency -----------------------------------------------------
if part watch; then
	log "Fan-out: hub vs ordered consumers, then end-to-end latency (20 turns per case) → $OUT/watch.txt"
	$GO test -run '^$' -bench BenchmarkWatchFanout -benchmem -benchtime 2000x -count 1 ./streaming/ | tee "$OUT/watch.txt"
	$GO test -run '^$' -bench BenchmarkWatchLatency -benchtime "${WATCH_TURNS:-20}x" -count 1 -timeout 30m ./server/ | tee -a "$OUT/watch.txt"
fi

# ---- 3. REST load -----------------------------------------------------------
if part load; then
	if ! command -v wrk >/dev/null; then
		log "installing wrk (Debian package)"
		sudo=""
		[[ $(id -u) != 0 ]] && sudo="sudo"
		$sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
	fi
	$GO build -trimpath -o bin/kgentsd ./cmd/kgentsd
	$GO build -trimpath -o bin/passthrough ./bench/passthrough

	work=$(mktemp -d)
	pids=()
	cleanup() {
		for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
		wait 2>/dev/null || true
		rm -rf "$work"
	}
	trap cleanup EXIT

	wait_http() { # url [any: any HTTP answer will do, not only 2xx]
		local f=-f
		[[ ${2:-} == any ]] && f=""
		for _ in $(seq 1 200); do
			curl $f -s -o /dev/null "$1" 2>/dev/null && return 0
			sleep 0.05
		done
		echo "not answering: $1" >&2
		return 1
	}
	load() { # name base-url → prints wrk's RESULT line
		local name=$1 url=$2
		wrk -t2 -c"$LOAD_CONNS" -d3s -s scripts/dialogue.lua "$url/v1/soul/dialogue" >/dev/null # warm-up
		wrk -t2 -c"$LOAD_CONNS" -d"${LOAD_SECONDS}s" --latency -s scripts/dialogue.lua "$url/v1/soul/dialogue" | tee "$OUT/load-$name.txt" >&2
		grep '^RESULT' "$OUT/load-$name.txt"
	}

	log "load baseline: bare grpc-gateway pass-through"
	./bin/passthrough -http 127.0.0.1:18090 2>"$work/passthrough.log" &
	pids+=($!)
	wait_http http://127.0.0.1:18090/ any
	base=$(load passthrough http://127.0.0.1:18090)
	kill "${pids[-1]}"
	wait "${pids[-1]}" 2>/dev/null || true

	log "load: kgentsd, full chain (auth, quota, metering, fan-out, metrics, OTel, logging)"
	# Quotas stay in the chain but the benchmark tenant is unlimited, so the
	# figure is throughput, not a 429 rate.
	echo '{"enterprise":{"requests_per_minute":0,"requests_per_day":0,"tokens_per_month":0}}' >"$work/tiers.json"
	HTTP_PORT=18080 GRPC_PORT=18081 NATS_EMBEDDED_PORT=18222 KGENTS_DATA_DIR="$work/data" \
		KGENTS_DEV_KEYS=true KGENTS_TIERS_FILE="$work/tiers.json" LOG_LEVEL=warn \
		./bin/kgentsd 2>"$work/kgentsd.log" &
	pids+=($!)
	wait_http http://127.0.0.1:18080/readyz
	full=$(load kgentsd http://127.0.0.1:18080)
	kill -TERM "${pids[-1]}"
	wait "${pids[-1]}" 2>/dev/null || true

	rps() { sed -n 's/.* rps=\([0-9]*\).*/\1/p' <<<"$1"; }
	{
		echo "machine: $(nproc) CPUs, $(go env GOOS)/$(go env GOARCH), $(go version | awk '{print $3}')"
		echo "wrk -t2 -c$LOAD_CONNS -d${LOAD_SECONDS}s POST /v1/soul/dialogue"
		echo "passthrough $base"
		echo "kgentsd     $full"
		awk -v k="$(rps "$full")" -v b="$(rps "$base")" 'BEGIN { if (b > 0) printf "kgentsd/passthrough = %.2f\n", k / b }'
	} | tee "$OUT/load.txt"
fi
