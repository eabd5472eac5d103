#!/usr/bin/env bash
# Configures and builds quantd into ./build (RelWithDebInfo). Extra args go to cmake.
# Uses ccache when it is installed (not required; a fresh CI machine builds without it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
            -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" "$@" >/dev/null
ninja -C build
