#!/bin/sh
# Builds the Rust NIF (release) and puts it where macula_dht_nif loads it from: priv/.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cargo build --release --quiet --manifest-path "$here/../Cargo.toml" -p macula_dht_nif
mkdir -p "$here/priv"
cp "$here/../target/release/libmacula_dht_nif.so" "$here/priv/libmacula_dht_nif.so.tmp"
mv "$here/priv/libmacula_dht_nif.so.tmp" "$here/priv/libmacula_dht_nif.so"
