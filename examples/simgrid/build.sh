#!/bin/sh
# Builds the SimGrid migration example against the system's SimGrid (Debian 12: libsimgrid-dev,
# SimGrid 3.32; it brings Boost, whose JSON parser the example uses).
#   examples/simgrid/build.sh [OUTPUT]     (default: target/simgrid/migrate)
set -eu
here=$(dirname "$0")
out=${1:-$here/../../target/simgrid/migrate}
mkdir -p "$(dirname "$out")"
# shellcheck disable=SC2046 # pkg-config's words are separate arguments
exec "${CXX:-g++}" -std=c++17 -O2 -Wall -Wextra -o "$out" "$here/migrate.cpp" $(pkg-config --cflags --libs simgrid)
