#!/bin/sh
# Installs what the build needs and a fresh machine of this kind lacks: Erlang/OTP, Dialyzer,
# rebar3 and Elixir (for the example in examples/elixir), from Debian's packages. Rust (cargo) is
# expected to be there already.
set -eu
missing=""
command -v erl >/dev/null 2>&1 || missing="$missing erlang-nox erlang-dev erlang-common-test"
# `make test' runs Dialyzer. Debian's rebar3 depends on erlang-dialyzer, erlang-nox does not: an
# Erlang with a rebar3 from elsewhere may lack it.
command -v dialyzer >/dev/null 2>&1 || missing="$missing erlang-dialyzer"
command -v rebar3 >/dev/null 2>&1 || missing="$missing rebar3"
# `make test' runs the Elixir example (mix); Debian's elixir package brings both commands.
{ command -v elixir && command -v mix; } >/dev/null 2>&1 || missing="$missing elixir"
[ -n "$missing" ] || exit 0
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust first" >&2; exit 1; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing:$missing"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
