#!/bin/sh
# Runs the demo against the built application (make demo builds it first).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/erlang/_build/demo"
mkdir -p "$out"
erlc -o "$out" "$root/demo/macula_demo.erl"
ERL_LIBS="$root/erlang/_build/default/lib" erl -noshell -pa "$out" -eval 'macula_demo:main()'
