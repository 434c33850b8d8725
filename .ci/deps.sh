#!/usr/bin/env bash
# Installs everything pie's build and tests need on a fresh Debian 12 machine (idempotent).
set -euo pipefail
pkgs=(cmake g++ make pkg-config libeigen3-dev nlohmann-json3-dev libcpp-httplib-dev libpcre2-dev
      libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev python3 python3-pip)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Python packages used by the test suites (the openai client tests, tokenizer/fixture checks).
python3 -m pip install -q --disable-pip-version-check pytest openai requests 2>&1 | grep -v "Running pip as the 'root'" || true
