#!/usr/bin/env bash
# bench/device_unbundle.sh — unpack a bench/device_bundle.sh bundle into /tmp/pie_bundle (once per
# machine and bundle) and print what it was built from, for steps that take binary paths rather
# than PIE_PREBUILT (bench/device_persist.sh's PIE_PERSIST_BIN):
#   bash bench/device_unbundle.sh .device/bundle.txz && PIE_PERSIST_BIN=/tmp/pie_bundle/bench/cuda/pie_bench_cuda_persist ...
set -u
PIE_PREBUILT=${1:-.device/bundle.txz}
source "$(dirname "$0")/device_lib.sh"
use_prebuilt && echo "$BUILD"
