# kgents-go. Every tool is pinned in tools/go.mod and run with `go tool`, so
# a fresh machine with Go needs nothing else: the first use builds it.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO       ?= go
TOOL     := $(GO) tool -modfile=tools/go.mod
# promtool has a module of its own (tools/promtool/go.mod says why).
PROMTOOL := $(GO) tool -modfile=tools/promtool/go.mod promtool
BIN      := bin/kgentsd
PKGS     := ./...
# Benchmarks: how long each Go benchmark runs, how many times, and the load test.
BENCHTIME  ?= 1s
BENCHCOUNT ?= 6
LOAD_SECONDS ?= 20
LOAD_CONNS   ?= 32
# make fuzz: how long FuzzUnmarshal runs (its seeds run in every `go test`).
FUZZTIME ?= 60s

.PHONY: help
help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: run
run: build ## Start kgentsd with no external services: embedded NATS, template engine, dev keys.
	KGENTS_DEV_KEYS=$${KGENTS_DEV_KEYS:-true} SOUL_CHUNK_DELAY=$${SOUL_CHUNK_DELAY:-30ms} ./$(BIN)

.PHONY: build
build: ## Build bin/kgentsd.
	$(GO) build -trimpath -o $(BIN) ./cmd/kgentsd

.PHONY: test
test: lint check-generated check-web lint-openapi test-rules test-manifests test-race test-web ## Everything CI checks: lint, generated-code drift, alert rules, manifests, race tests.

.PHONY: web
web: ## Build the console (web/ → web/dist, committed and embedded) with npm: typecheck, then vite build.
	cd web && npm ci --no-audit --no-fund --loglevel=error && npm run typecheck && npm run build

.PHONY: check-web
check-web: ## Fail when the committed console build (web/dist) is stale, like check-generated.
	@if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then echo "check-web: not a git checkout, skipped"; exit 0; fi
	$(MAKE) --no-print-directory web
	@changes="$$(git status --porcelain -- web/dist)"; \
	  if [ -n "$$changes" ]; then echo "web/dist is stale; run 'make web' and commit:"; echo "$$changes"; exit 1; fi
	@echo "web/dist is up to date"

.PHONY: test-web
test-web: build bin/stripe-mock ## Browser tests of the console: headless Chromium (installed when missing) against a real bin/kgentsd (and one with billing at stripe-mock).
	./scripts/ensure-chromium.sh
	cd web && npm ci --no-audit --no-fund --loglevel=error && KGENTSD=$(CURDIR)/$(BIN) STRIPE_MOCK=$(CURDIR)/bin/stripe-mock npm test

.PHONY: bin/stripe-mock
bin/stripe-mock: ## Build the Stripe mock pinned in tools/stripemock/go.mod (for the browser tests).
	cd tools/stripemock && $(GO) build -o $(CURDIR)/bin/stripe-mock github.com/stripe/stripe-mock

.PHONY: console-screenshots
console-screenshots: build bin/stripe-mock ## Run the browser tests and save a screenshot of every console page in docs/console/.
	./scripts/ensure-chromium.sh
	cd web && npm ci --no-audit --no-fund --loglevel=error && KGENTSD=$(CURDIR)/$(BIN) STRIPE_MOCK=$(CURDIR)/bin/stripe-mock KGENTS_SCREENSHOTS=$(CURDIR)/docs/console npm test

.PHONY: test-rules
test-rules: ## Check the Prometheus rules and run their unit tests (deploy/prometheus/rules_test.yaml).
	$(PROMTOOL) check rules deploy/prometheus/rules.yaml
	$(PROMTOOL) test rules deploy/prometheus/rules_test.yaml

.PHONY: test-manifests
test-manifests: ## Build deploy/kubernetes and its Secret templates with kustomize; decode every object strictly into the Kubernetes types and cross-check them.
	cd tools/k8scheck && $(GO) vet . && $(GO) test -count=1 . && $(GO) run . ../../deploy/kubernetes ../../deploy/kubernetes/secrets

.PHONY: test-race
test-race: ## Run every test with the race detector.
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

.PHONY: test-short
test-short: ## Quick test run without the race detector.
	$(GO) test -count=1 $(PKGS)

.PHONY: fuzz
fuzz: ## Fuzz apijson's JSON reader against protojson for FUZZTIME (default 60s); the seeds run in make test.
	$(GO) test -run '^$$' -fuzz '^FuzzUnmarshal$$' -fuzztime $(FUZZTIME) ./apijson/

.PHONY: lint
lint: ## go vet, gofmt, buf lint, golangci-lint.
	$(GO) vet $(PKGS)
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null | grep -v '^gen/' || find . -name '*.go' -not -path './gen/*'))"; \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(TOOL) buf lint
	$(TOOL) golangci-lint run $(PKGS)

.PHONY: generate
generate: ## Regenerate gen/ from proto/ (offline, byte for byte reproducible).
	rm -rf gen/kgents gen/openapi
	$(TOOL) buf generate
	cd tools && $(GO) run ./openapipatch ../gen/openapi/kgents.swagger.json
	# The descriptor set tells openapiv3 which RPCs are (kgents.api.v1.idempotent).
	desc="$$(mktemp)"; trap 'rm -f "$$desc"' EXIT; \
	  $(TOOL) buf build --as-file-descriptor-set -o "$$desc#format=binpb" && \
	  cd tools && $(GO) run ./openapiv3 ../gen/openapi/kgents.swagger.json "$$desc" ../gen/openapi

.PHONY: lint-openapi
lint-openapi: ## Validate /openapi.json (gen/openapi/kgents.openapi.json, OpenAPI 3.1) with libopenapi-validator: 0 errors.
	cd tools/openapilint && $(GO) run . ../../gen/openapi/kgents.openapi.json

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

.PHONY: chaos
chaos: ## The fault suite's long versions: kill -9 mid-turn, NATS restarts, SIGTERM under load, a 5-minute read soak.
	KGENTS_CHAOS_LONG=1 $(GO) test -count=1 -timeout 30m -v ./chaos/

.PHONY: nats-server
nats-server: bin/nats-server ## Build bin/nats-server from the nats-server/v2 module go.mod pins (the cluster harness runs it).

bin/nats-server: go.mod
	$(GO) build -trimpath -o $@ github.com/nats-io/nats-server/v2

.PHONY: capacity
capacity: bin/nats-server ## Capacity of 1 and 3 kgentsd replicas on a 3-node R3 NATS cluster: REST calls/s, watch deliveries/s, CPU per call (docs/operations.md).
	KGENTS_CLUSTER_CAPACITY=1 KGENTS_NATS_SERVER=$(CURDIR)/bin/nats-server $(GO) test -count=1 -timeout 20m -v -run TestCapacity ./cluster/

.PHONY: cluster
cluster: bin/nats-server ## 3 NATS nodes + 3 kgentsd replicas (cluster/): R3 checks, the long fault runs (node kill, rolling restarts), backup and restore of a loaded cluster.
	KGENTS_CLUSTER_LONG=1 KGENTS_NATS_SERVER=$(CURDIR)/bin/nats-server $(GO) test -count=1 -timeout 30m -v ./cluster/

.PHONY: bench
bench: ## Go benchmarks (benchstat summary) and the REST load benchmark.
	./scripts/bench.sh

.PHONY: clean
clean: ## Remove build output and local data.
	rm -rf bin data
