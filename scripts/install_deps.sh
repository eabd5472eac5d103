#!/usr/bin/env bash
# Installs the Debian 12 packages quantd builds with (run as root). Skips apt when all are there.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
      libabsl-dev libeigen3-dev prometheus-cpp-dev libsqlite3-dev libssl-dev
      nlohmann-json3-dev libgtest-dev libgmock-dev)
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
