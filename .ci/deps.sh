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
python3 -m pip install -q --disable-pip-version-check pytest openai requests jsonschema pydantic 2>&1 | grep -v "Running pip as the 'root'" || true
# XGrammar's C++ core (structured outputs) from its PyPI source distribution, unpacked into a
# cache outside the repository; CMake builds the static core from there (PIE_XGRAMMAR_DIR).
# `--no-binary xgrammar`, not `:all:`: pip reads the sdist's metadata through its build tools,
# and `:all:` would compile those (CMake itself) from source too.
xgr_cache="${PIE_DEPS_CACHE:-$HOME/.cache/pie-deps}"
if [[ ! -f "$xgr_cache/xgrammar-0.2.8/include/xgrammar/xgrammar.h" ]]; then
  mkdir -p "$xgr_cache"
  python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary xgrammar xgrammar==0.2.8 \
    -d "$xgr_cache" 2>&1 | grep -v "Running pip as the 'root'" || true
  tar -xzf "$xgr_cache/xgrammar-0.2.8.tar.gz" -C "$xgr_cache"
fi
# CUTLASS's headers (the nvidia-cutlass wheel's cutlass_library/source/include) for the MoE
# experts' CUTLASS path (CMake turns PIE_MOE_CUTLASS on when they are there): unpacked into
# $PIE_DEPS_CACHE/cutlass-4.2.0.0/include, CMake's default PIE_CUTLASS_DIR. PIE_MOE_CUTLASS=OFF
# skips them.
if [[ "${PIE_MOE_CUTLASS:-ON}" != OFF ]]; then
  cutlass_dir="${PIE_DEPS_CACHE:-$HOME/.cache/pie-deps}/cutlass-4.2.0.0"
  if [[ ! -f "$cutlass_dir/include/cutlass/cutlass.h" ]]; then
    mkdir -p "$cutlass_dir"
    python3 -m pip download -q --disable-pip-version-check --no-deps nvidia-cutlass==4.2.0.0 -d "$cutlass_dir" 2>&1 \
      | grep -v "Running pip as the 'root'" || true
    python3 - "$cutlass_dir" <<'PY'
import sys, zipfile, pathlib
d = pathlib.Path(sys.argv[1]); pre = "cutlass_library/source/include/"
with zipfile.ZipFile(next(d.glob("nvidia_cutlass-4.2.0.0-*.whl"))) as z:
    for n in z.namelist():
        if n.startswith(pre) and not n.endswith("/"):
            out = d / "include" / n[len(pre):]; out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(n))
PY
  fi
fi
