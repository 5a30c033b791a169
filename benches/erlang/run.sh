#!/usr/bin/env bash
# Comparison benchmark of ours (macula_routing_server over the NIF) against the old pure-Erlang
# design, both in one VM. Prints a table and writes <out_dir>/erlang.json.
#
# Usage: benches/erlang/run.sh <ours> <out_dir>
#   <ours>  either the rebar3 lib dir (erlang/_build/default/lib, as `make bench-erlang` passes)
#           or our ebin dir (…/macula_dht/ebin); its parent app dir must be named macula_dht so
#           that code:priv_dir(macula_dht) finds the NIF.
# Environment:
#   OLD_MACULA_SRC=<Macula checkout>  baseline = the real old modules imported from that checkout
#                                     (renamed old_*), instead of the reference in erlang/test.
#   MACULA_BENCH_ONLY=baseline|ours   run one side only (baseline alone works without the NIF).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 <ours_lib_dir|ours_ebin_dir> <out_dir>" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ours=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)

if [ -d "$ours/macula_dht/ebin" ]; then
    ours_ebin="$ours/macula_dht/ebin"
    lib_dir="$ours"
else
    ours_ebin="$ours"
    lib_dir=$(dirname "$(dirname "$ours")")
fi
export ERL_LIBS="$lib_dir${ERL_LIBS:+:$ERL_LIBS}"

old_ebin="$out/old_ebin"
bench_ebin="$out/bench_ebin"
rm -rf "$old_ebin" "$bench_ebin"
mkdir -p "$old_ebin" "$bench_ebin"

if [ -n "${OLD_MACULA_SRC:-}" ]; then
    escript "$here/import_old.escript" "$OLD_MACULA_SRC" "$old_ebin" "$root/erlang/test"
else
    erlc -o "$old_ebin" "$root"/erlang/test/old_*.erl
    echo "run.sh: baseline = reference of the old design (erlang/test/old_*.erl)"
fi
erlc -o "$bench_ebin" "$here/macula_bench.erl"

exec erl -noshell -pa "$ours_ebin" "$old_ebin" "$bench_ebin" \
    -run macula_bench main "$out"
