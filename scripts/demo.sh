#!/bin/sh
# Plays the demo against the built application and rust-node (make demo builds both first).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/erlang/_build/demo"
mkdir -p "$out"
erlc -o "$out" "$root"/demo/*.erl
tmp=$(mktemp -d -t macula_demo.XXXXXX)
# The demo stops its nodes and removes $tmp itself. This covers an interrupted run: Ctrl-C ends
# the VM at once (+Bd) and its peer VMs with it, but not the Rust nodes (port programs run in
# sessions of their own), which are stopped here by the pid files they leave in $tmp.
cleanup() {
    for pidfile in "$tmp"/*.pid; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
erl +Bd -noshell -pa "$out" -pa "$root/erlang/_build/default/lib/macula_dht/ebin" \
    -run macula_demo main "$root/target/release/rust-node" "$tmp"
