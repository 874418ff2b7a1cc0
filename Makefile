# kgents-go. Every tool is pinned in tools/go.mod and run with `go tool`, so
# a fresh machine with Go needs nothing else: the first use builds it.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO       ?= go
TOOL     := $(GO) tool -modfile=tools/go.mod
BIN      := bin/kgentsd
PKGS     := ./...
# Benchmarks: how long each Go benchmark runs, how many times, and the load test.
BENCHTIME  ?= 1s
BENCHCOUNT ?= 6
LOAD_SECONDS ?= 20
LOAD_CONNS   ?= 32

.PHONY: help
help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: run
run: build ## Start kgentsd with no external services: embedded NATS, template engine, dev keys.
	KGENTS_DEV_KEYS=$${KGENTS_DEV_KEYS:-true} ./$(BIN)

.PHONY: build
build: ## Build bin/kgentsd.
	$(GO) build -trimpath -o $(BIN) ./cmd/kgentsd

.PHONY: test
test: lint check-generated test-race ## Everything CI checks: lint, generated-code drift, race tests.

.PHONY: test-race
test-race: ## Run every test with the race detector.
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

.PHONY: test-short
test-short: ## Quick test run without the race detector.
	$(GO) test -count=1 $(PKGS)

.PHONY: lint
lint: ## go vet, gofmt, buf lint, golangci-lint.
	$(GO) vet $(PKGS)
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null | grep -v '^gen/' || find . -name '*.go' -not -path './gen/*'))"; \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(TOOL) buf lint
	$(TOOL) golangci-lint run $(PKGS)

.PHONY: generate
generate: ## Regenerate gen/ from proto/ (offline, byte for byte reproducible).
	rm -rf gen/kgents gen/openapi/kgents.swagger.json
	$(TOOL) buf generate
	cd tools && $(GO) run ./openapipatch ../gen/openapi/kgents.swagger.json

.PHONY: vendor-protos
vendor-protos: ## Rewrite proto/third_party from the Go modules tools/go.mod pins.
	rm -rf proto/third_party
	cd tools && $(GO) run ./protovendor ../proto/third_party

.PHONY: check-generated
check-generated: ## Fail when `make generate` or `make vendor-protos` would change anything.
	@if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then echo "check-generated: not a git checkout, skipped"; exit 0; fi
	$(MAKE) --no-print-directory vendor-protos generate
	@changes="$$(git status --porcelain -- gen proto/third_party)"; \
	  if [ -n "$$changes" ]; then echo "generated code is stale; run 'make vendor-protos generate' and commit:"; echo "$$changes"; git --no-pager diff --stat -- gen proto/third_party; exit 1; fi
	@echo "generated code is up to date"

.PHONY: bench
bench: ## Go benchmarks (benchstat summary) and the REST load benchmark.
	./scripts/bench.sh

.PHONY: clean
clean: ## Remove build output and local data.
	rm -rf bin data
