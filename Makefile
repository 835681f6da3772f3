# eventq: build, test, demo and benchmark. Every target first installs what is missing
# (apt packages, cargo-pgrx, pgrx's Postgres configuration), so each works on a fresh
# Debian 12 machine as root.

SHELL := /bin/bash
PG_CONFIG ?= /usr/bin/pg_config
export PATH := $(HOME)/.cargo/bin:$(PATH)
# A Rust backtrace setting would be inherited by test servers and end up in error details.
unexport RUST_BACKTRACE

# Postgres refuses to run as root: as root, test servers run as the postgres user.
ifeq ($(shell id -u),0)
RUNAS := --runas postgres
endif
PGTEST_DIR ?= /tmp/eventq-pgtest

.PHONY: all deps build install unit test chaos demo demo-stop console bench bench-quick bench-deps soak clean

all: build

deps:
	@.ci/install-deps

build: deps
	cargo build --features pg15

# Builds and installs the extension into the Postgres that $(PG_CONFIG) describes.
# `cargo pgrx install` removes the old library before writing the new one, so a running
# server keeps the file it has mapped (every install path of this Makefile goes through it
# or through .ci/bin/sudo, never rewriting the library in place).
install: deps
	cargo pgrx install --pg-config $(PG_CONFIG)

# The pure-logic tests alone: no Postgres involved.
unit: deps
	cargo test --lib core::
	cargo test -p eventq-cli

# Everything: pure-logic #[test]s, #[pg_test]s inside Postgres, then the integration tests
# in tests/ against their own throwaway clusters (the `eventq` command's among them), then
# the command's own unit tests. One test at a time: the machine is small
# and the integration tests run several connections each.
# pgrx's test runner installs with `sudo cp`, which would rewrite the library a running
# server has mapped: .ci/bin/sudo replaces it by rename instead (see there).
test: deps
	@mkdir -p $(PGTEST_DIR) && chmod 777 $(PGTEST_DIR)
	PATH="$(CURDIR)/.ci/bin:$$PATH" RUST_TEST_THREADS=1 cargo pgrx test pg15 $(RUNAS) --pgdata $(PGTEST_DIR)/data
	cargo test -p eventq-cli

# A longer seeded chaos run (tests/chaos.rs): make chaos SEED=7 MINUTES=10
SEED ?= 20261127
MINUTES ?= 5
chaos: install
	CHAOS_SEED=$(SEED) CHAOS_SECONDS=$$(( $(MINUTES) * 60 )) cargo test --test chaos -- --nocapture

# A throwaway local Postgres with eventq preloaded, a short tour, and how to connect.
demo: install
	@.ci/demo start

demo-stop:
	@.ci/demo stop

# The web console (the `eventq` command, cli/) against the demo database, started first if
# it is not running. Ctrl-C stops the console; `make demo-stop` the database.
CONSOLE_LISTEN ?= 127.0.0.1:8080
DEMO_PORT ?= 54329
console: install
	@[ -f .demo/data/postmaster.pid ] || .ci/demo start
	cargo build -p eventq-cli
	DATABASE_URL=postgresql://postgres@127.0.0.1:$(DEMO_PORT)/postgres target/debug/eventq console --listen $(CONSOLE_LISTEN)

# eventq side by side with a minimal hand-written queue, pgmq and PgQ on one fresh cluster:
# throughput, end to end through the background worker, and a soak under a held snapshot.
# Results under bench/results/. bench-quick: the same, shorter and smaller (under 5 min).
bench: bench-deps
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	@bench/run

bench-quick: bench-deps
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	@BENCH_QUICK=1 bench/run

# matplotlib, for the soak's plots.
bench-deps: deps
	@python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q -r bench/requirements.txt

# A sustained publish + pull + ack run with the worker, sampling table sizes over time.
soak: deps
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	@bench/soak

clean:
	-@.ci/demo stop
	cargo clean
