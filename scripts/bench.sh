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
	# Authentication: a KV-managed key (control-plane cache) beside a key-file/dev key.
	gobench ./controlplane/ 'BenchmarkAuthenticate'
	# Throughput benchmarks move a fixed number of messages per run.
	BENCHTIME=200000x gobench ./streaming/ 'BenchmarkPublish|BenchmarkSpool|BenchmarkSpan|BenchmarkRawPublish'
	# A watcher's resume near the end of sessions of 2k, 20k and 100k events.
	BENCHTIME=200x gobench ./streaming/ 'BenchmarkHistoryResume'
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

# ---- 3. Load: REST and native gRPC, each against its bare baseline --------
# Rounds alternate baseline and kgentsd (LOAD_ROUNDS, default 3) and the
# medians are compared: the machine's speed drifts during a run, so only
# ratios measured side by side mean anything. Allocations per call are the
# server process's heap allocations during the measured window divided by
# the calls answered (kgentsd's include its embedded NATS server's).
if part load; then
	if ! command -v wrk >/dev/null; then
		log "installing wrk (Debian package)"
		sudo=""
		[[ $(id -u) != 0 ]] && sudo="sudo"
		$sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
	fi
	$GO build -trimpath -o bin/kgentsd ./cmd/kgentsd
	$GO build -trimpath -o bin/passthrough ./bench/passthrough
	$GO build -trimpath -o bin/grpcload ./bench/grpcload
	ROUNDS=${LOAD_ROUNDS:-3}

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
	mallocs() { # kind url → heap allocations so far
		if [[ $1 == kgentsd ]]; then
			curl -fs "$2/metrics" | awk '$1 == "go_memstats_mallocs_total" { printf "%.0f\n", $2 }'
		else
			curl -fs "$2/mallocs"
		fi
	}
	field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }
	# measure name kind(rest|grpc) server(kgentsd|passthrough) http-url grpc-addr → RESULT line + allocs_per_call
	measure() {
		local name=$1 kind=$2 server=$3 url=$4 addr=$5 out before after res
		out="$OUT/load-$name.txt"
		if [[ $kind == rest ]]; then
			wrk -t2 -c"$LOAD_CONNS" -d3s -s scripts/dialogue.lua "$url/v1/soul/dialogue" >/dev/null # warm-up
			before=$(mallocs "$server" "$url")
			wrk -t2 -c"$LOAD_CONNS" -d"${LOAD_SECONDS}s" --latency -s scripts/dialogue.lua "$url/v1/soul/dialogue" >>"$out"
		else
			./bin/grpcload -addr "$addr" -key kg_dev_carol -c "$LOAD_CONNS" -d 3s -warmup 0s >/dev/null
			before=$(mallocs "$server" "$url")
			./bin/grpcload -addr "$addr" -key kg_dev_carol -c "$LOAD_CONNS" -d "${LOAD_SECONDS}s" -warmup 0s >>"$out"
		fi
		after=$(mallocs "$server" "$url")
		res=$(grep '^RESULT' "$out" | tail -1)
		awk -v r="$res" -v b="$before" -v a="$after" -v n="$(field requests "$res")" \
			'BEGIN { printf "%s allocs_per_call=%.0f\n", r, (n > 0 ? (a - b) / n : 0) }'
	}
	median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

	echo '{"enterprise":{"requests_per_minute":0,"requests_per_day":0,"tokens_per_month":0}}' >"$work/tiers.json"
	start_passthrough() {
		./bin/passthrough -http 127.0.0.1:18090 -grpc 127.0.0.1:18091 2>"$work/passthrough.log" &
		pids+=($!)
		wait_http http://127.0.0.1:18090/mallocs
	}
	start_kgentsd() {
		# Quotas stay in the chain but the benchmark tenant is unlimited, so
		# the figure is throughput, not a 429 rate.
		rm -rf "$work/data"
		HTTP_PORT=18080 GRPC_PORT=18081 NATS_EMBEDDED_PORT=18222 KGENTS_DATA_DIR="$work/data" \
			KGENTS_DEV_KEYS=true KGENTS_TIERS_FILE="$work/tiers.json" LOG_LEVEL=warn \
			./bin/kgentsd 2>"$work/kgentsd.log" &
		pids+=($!)
		wait_http http://127.0.0.1:18080/readyz
	}
	stop_last() {
		kill -TERM "${pids[-1]}"
		wait "${pids[-1]}" 2>/dev/null || true
		unset 'pids[-1]'
	}
	: >"$OUT/load-rounds.txt"
	for round in $(seq 1 "$ROUNDS"); do
		for kind in rest grpc; do
			log "round $round/$ROUNDS, $kind: baseline (bare grpc-gateway pass-through / bare grpc-go)"
			start_passthrough
			echo "round=$round kind=$kind server=baseline $(measure "baseline-$kind" "$kind" passthrough http://127.0.0.1:18090 127.0.0.1:18091)" | tee -a "$OUT/load-rounds.txt" >&2
			stop_last
			log "round $round/$ROUNDS, $kind: kgentsd, full chain (auth, quota, metering, fan-out, metrics, OTel, logging)"
			start_kgentsd
			echo "round=$round kind=$kind server=kgentsd $(measure "kgentsd-$kind" "$kind" kgentsd http://127.0.0.1:18080 127.0.0.1:18081)" | tee -a "$OUT/load-rounds.txt" >&2
			stop_last
		done
	done
	med() { grep "kind=$1 server=$2 " "$OUT/load-rounds.txt" | sed -n "s/.* $3=\([0-9.]*\).*/\1/p" | median; }
	{
		echo "machine: $(nproc) CPUs, $(go env GOOS)/$(go env GOARCH), $(go version | awk '{print $3}')"
		echo "POST /v1/soul/dialogue (REST: wrk -t2 -c$LOAD_CONNS; gRPC: grpcload -c $LOAD_CONNS), ${LOAD_SECONDS}s per run, medians of $ROUNDS rounds"
		for kind in rest grpc; do
			b=$(med "$kind" baseline rps) k=$(med "$kind" kgentsd rps)
			ba=$(med "$kind" baseline allocs_per_call) ka=$(med "$kind" kgentsd allocs_per_call)
			bp=$(med "$kind" baseline p99_ms) kp=$(med "$kind" kgentsd p99_ms)
			awk -v kind="$kind" -v b="$b" -v k="$k" -v ba="$ba" -v ka="$ka" -v bp="$bp" -v kp="$kp" 'BEGIN {
				base = (kind == "rest" ? "pass-through" : "bare grpc-go")
				printf "%-4s kgentsd %6.0f req/s (p99 %s ms, %s allocs/call)  %s %6.0f req/s (p99 %s ms, %s allocs/call)  ratio %.2f\n",
					kind, k, kp, ka, base, b, bp, ba, (b > 0 ? k / b : 0) }'
		done
	} | tee "$OUT/load.txt"
fi
