#!/usr/bin/env bash
# Installs the Debian 12 packages quantd builds with (run as root). Skips apt when all are there.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
      libabsl-dev libeigen3-dev prometheus-cpp-dev libsqlite3-dev libssl-dev
      nlohmann-json3-dev libgtest-dev libgmock-dev)
# Test-only: python3 + PyYAML + venv (deploy files test, Python client test) and prometheus
# (the real-Prometheus integration test; ~23 s and ~100 MB to install, so on by default).
# QUANTD_BUILD_ONLY=1 (the Dockerfile) skips them; QUANTD_NO_PROMETHEUS=1 skips prometheus.
if [ "${QUANTD_BUILD_ONLY:-0}" != 1 ]; then
  pkgs+=(python3 python3-yaml python3-venv)
  [ "${QUANTD_NO_PROMETHEUS:-0}" = 1 ] || pkgs+=(prometheus)
fi
# QUANTD_CLANG=1: clang and LLVM's OpenMP runtime (scripts/fuzz.sh, scripts/thread_safety.sh and
# the ThreadSanitizer tier, scripts/test.sh --sanitize=thread).
[ "${QUANTD_CLANG:-0}" = 1 ] && pkgs+=(clang libomp-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
