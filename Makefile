# The two commands of the README: `make demo` and `make test`. Both install what is missing.
SHELL := /bin/bash
ERLANG_DIR := erlang
REBAR := cd $(ERLANG_DIR) && rebar3
ERL_LIBS_DIR := $(CURDIR)/$(ERLANG_DIR)/_build/default/lib
BENCH_DIR := $(CURDIR)/target/bench
# `make test` fuzzes the wire decoders this long on the seed corpus; `make fuzz` runs longer.
TEST_FUZZ_SECONDS ?= 60
FUZZ_SECONDS ?= 600

.PHONY: all deps build test test-rust test-erlang test-elixir test-fuzz demo bench bench-engine bench-erlang bench-cluster bench-scale fuzz clean

all: build

deps:
	@./scripts/install-deps.sh

build: deps
	$(REBAR) compile

test: deps test-rust test-fuzz test-erlang test-elixir

test-rust:
	cargo test --workspace

# Dialyzer (the application, then the demo modules against it), EUnit, then the multi-node
# suites (Common Test), which run rust-node processes beside BEAM VMs.
test-erlang: deps
	cargo build --release -p macula_dht_node --bins --example hostile_peer
	$(REBAR) dialyzer
	./scripts/dialyzer-demo.escript
	$(REBAR) eunit
	cd $(ERLANG_DIR) && MACULA_RUST_NODE=$(CURDIR)/target/release/rust-node \
		MACULA_HOSTILE_PEER=$(CURDIR)/target/release/examples/hostile_peer rebar3 ct

# The Elixir example (examples/elixir): a round trip between the Elixir VM and a rust-node. mix
# builds the application with Debian's rebar3, offline (see its mix.exs). Skipped without Elixir.
test-elixir: deps
	@if command -v mix >/dev/null 2>&1; then \
		cargo build --release -p macula_dht_node --bins && \
		cd examples/elixir && MACULA_RUST_NODE=$(CURDIR)/target/release/rust-node mix test; \
	else \
		echo "test-elixir: skipped, mix not found (scripts/install-deps.sh installs Elixir)"; \
	fi

test-fuzz:
	./scripts/fuzz.sh $(TEST_FUZZ_SECONDS)

fuzz:
	./scripts/fuzz.sh $(FUZZ_SECONDS)

demo: build
	cargo build --release --quiet -p macula_dht_node
	@./scripts/demo.sh

bench: bench-engine bench-erlang bench-cluster bench-scale

bench-engine:
	cargo bench -p macula_dht

bench-cluster:
	cargo bench -p macula_dht_node --bench cluster

# The simulator at 1 k, 10 k and 100 k nodes, on every core: target/bench/scale.json and the
# plots of docs/scale.md (target/bench/scale_*.svg); its allocator on 2 MiB pages where the
# kernel allows (the 100 k network holds 4 GB). Then a real testnet of 1 000 nodes in one process
# (target/bench/testnet.json).
bench-scale:
	MIMALLOC_ALLOW_LARGE_OS_PAGES=1 cargo bench -p macula_dht_sim --bench scale
	cargo bench -p macula_dht_node --bench testnet

bench-erlang: build
	@mkdir -p $(BENCH_DIR)
	./benches/erlang/run.sh $(ERL_LIBS_DIR) $(BENCH_DIR)

clean:
	cargo clean
	rm -rf $(ERLANG_DIR)/_build $(ERLANG_DIR)/priv examples/elixir/_build
