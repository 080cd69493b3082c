# `make dev` starts everything; `make test` runs every test. Both install what
# is missing first (scripts/setup.sh).
SHELL := /bin/bash
.DEFAULT_GOAL := help

export PATH := $(CURDIR)/node_modules/.bin:$(HOME)/.cargo/bin:$(PATH)
export WRANGLER_SEND_METRICS := false
export CLOUDFLARE_CF_FETCH_ENABLED := false
# worker-build would download these from GitHub; use the pinned local ones.
export WASM_BINDGEN_BIN := $(HOME)/.cargo/bin/wasm-bindgen
export WASM_OPT_BIN := $(CURDIR)/node_modules/.bin/wasm-opt
export ESBUILD_BIN := $(CURDIR)/node_modules/.bin/esbuild

RUST_SOURCES := $(shell find src crates -name '*.rs' -o -name '*.json' -o -name Cargo.toml) Cargo.toml Cargo.lock

.PHONY: help setup worker dev test test-unit test-e2e schemathesis lint migrate demo-data bench-reports bench bench-smoke bench-tools mutants

help:
	@echo "make dev    start the worker on http://127.0.0.1:8787 (local D1, Durable Objects)"
	@echo "            and localstripe on http://127.0.0.1:8420 (test card: scripts/test-card.sh ORG)"
	@echo "make test   run every test (native unit/property tests, lint, end-to-end, schemathesis)"
	@echo "make schemathesis  schemathesis over /openapi.json of a fresh worker, once per role (about 4 minutes)"
	@echo "make demo-data   fill organization ORG (default demo) with 60 days of AI usage"
	@echo "                 through the running worker at BASE (default http://127.0.0.1:8787)"
	@echo "make bench  measure throughput, latency and storage work (DURATION=10s CONNECTIONS=16)"
	@echo "make bench-smoke  the same with 1-second scenarios, to prove it still runs (CI)"
	@echo "make mutants  mutation testing of wallet-domain and wallet-core (cargo-mutants; takes"
	@echo "              hours, not in make test); MUTANTS_ARGS='--file PATH -j 1' narrows it"

setup:
	@scripts/setup.sh

worker: build/index.js

build/index.js: $(RUST_SOURCES)
	worker-build --release
	@touch $@

# exec: make's child is dev.sh itself, which stops the stack and waits for it
# on INT/TERM; make waits for it in turn (no shell in between to die first).
dev: setup worker
	exec scripts/dev.sh

test: setup
	$(MAKE) lint test-unit worker test-e2e schemathesis

lint:
	cargo fmt --all --check
	cargo clippy -p wallet-domain -p wallet-core --all-targets -- -D warnings
	# Non-test code: no function over 70 lines (clippy.toml).
	cargo clippy -p wallet-domain -p wallet-core -- -D warnings -D clippy::too_many_lines
	cargo clippy -p ai-wallet --target wasm32-unknown-unknown -- -D warnings -D clippy::too_many_lines

test-unit:
	cargo test -p wallet-domain -p wallet-core
	cargo test -p ai-wallet --lib

test-e2e: worker
	node --test --test-concurrency=1 'tests/e2e/*.test.mjs'

# schemathesis (from .venv, installed by scripts/setup.sh) against a fresh
# `wrangler dev` and localstripe: every phase, every check but
# positive_data_acceptance, a token per role; fails on any failure or 5xx.
schemathesis: worker
	scripts/schemathesis.sh

# Fills a demo organization through the real API of a running `make dev`
# (never run implicitly). ORG=, BASE=, DAYS= override the defaults.
demo-data:
	node scripts/demo-data.mjs

# Times usage and transactions for an organization with a million debits
# (written straight into a temporary local D1); a few minutes. Not in `make test`.
bench-reports: worker
	node --test --test-concurrency=1 tests/bench/reports.bench.mjs

# Benchmark: wrk against `wrangler dev` on a free port with a fresh state
# directory (scripts/bench.sh). Prints one table; exits 0 whatever the figures.
DURATION ?= 10s
CONNECTIONS ?= 16
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

bench-tools:
	@command -v wrk >/dev/null 2>&1 || $(SUDO) apt-get install -y --no-install-recommends wrk \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends wrk; }

bench: setup bench-tools worker
	scripts/bench.sh --duration $(DURATION) --connections $(CONNECTIONS)

bench-smoke: setup bench-tools worker
	scripts/bench.sh --smoke

# Mutation testing of the pure crates (cargo-mutants): every mutant is built
# and tested in a copy of the tree, so this takes hours; never part of
# `make test`. Results in target/mutants/mutants.out (missed.txt lists the
# mutants no test caught). Exit 2 (missed) and 3 (timeouts) are findings, not
# failures; anything else (4: the baseline fails) fails the target.
MUTANTS_ARGS ?=

mutants:
	@command -v cargo-mutants >/dev/null 2>&1 || cargo install --locked cargo-mutants@27.1.0
	@mkdir -p target; status=0; cargo mutants -p wallet-domain -p wallet-core -o target/mutants $(MUTANTS_ARGS) || status=$$?; \
	out=target/mutants/mutants.out; \
	for outcome in caught missed unviable timeout; do \
		printf '%-9s %s\n' "$$outcome" "$$(cat $$out/$$outcome.txt 2>/dev/null | wc -l)"; \
	done; \
	case $$status in 0|2|3) ;; *) echo "cargo mutants failed ($$status)"; exit $$status;; esac
