// Package chaos is kgentsd's fault suite: real kgentsd processes (built
// from ./cmd/kgentsd) on a real NATS server, under load, with faults that
// happen to processes — kill -9 of a replica mid-turn, NATS stopped and
// restarted mid-stream, SIGTERM under load — each asserting that nothing
// acknowledged is lost, nothing is doubled and nothing stays stuck. The
// short versions run in `make test`; `make chaos` runs the long ones
// (KGENTS_CHAOS_LONG=1). docs/benchmarks.md records what was tried and what
// held.
package chaos
