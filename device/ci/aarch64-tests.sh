#!/usr/bin/env bash
# Cross-builds `device` for aarch64-unknown-linux-gnu and runs its tests under qemu-aarch64 with
# two CPUs: cortex-a72 (Raspberry Pi 4: no fp16 arithmetic, no dotprod) and max (fp16, dotprod).
# Emulated timings are meaningless: this checks correctness only.
#
# Needs: rustup target aarch64-unknown-linux-gnu, gcc-aarch64-linux-gnu, qemu-user, and the test
# fixtures (generated here with the venv python if missing; tests/common/mod.rs explains).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/d}"
PY="${DEVICE_TEST_PYTHON:-$PWD/.venv/bin/python}"
FIX="${DEVICE_FIXTURES:-$PWD/target/device-fixtures}"
if [ ! -f "$FIX/resnet18.parity.safetensors" ] || [ ! -f "$FIX/resnet8.parity.safetensors" ]; then
  "$PY" tools/make_test_models.py --out "$FIX"
fi
export DEVICE_FIXTURES="$FIX" DEVICE_REQUIRE_FIXTURES=1
# Compact fixture files are converted natively once, so the emulated runs only read them.
cargo test -p device --test parity --test int8_kernels -- --test-threads 2
cargo build -p device --release --target aarch64-unknown-linux-gnu
for cpu in cortex-a72 max; do
  echo "== qemu-aarch64 -cpu $cpu"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu" \
    cargo test -p device --target aarch64-unknown-linux-gnu -- --test-threads 2
done
