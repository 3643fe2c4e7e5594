#!/usr/bin/env bash
# Builds the threaded CPU worker (web's `threads` feature) into trunk's staging folder;
# trunk runs this after its own build (`[[hooks]]` in Trunk.toml). Trunk cannot build it
# itself: shared memory between Web Workers needs wasm atomics, so the standard library is
# rebuilt with them (`-Z build-std`, a nightly Rust with `rust-src`: `.ci/setup-web`
# installs it), and wasm-bindgen-rayon's pool needs wasm-bindgen's ES-module output.
#
# Writes worker-threads.js + worker-threads_bg.wasm (+ wasm-bindgen-rayon's helper under
# snippets/) and the entry web/worker-threads_loader.js. Without the nightly toolchain
# it says so and builds nothing: the page then runs the one-thread workers.
#
# `web/build-threads.sh clippy` runs clippy on that build's code instead (`.ci/run`).
set -euo pipefail

TOOLCHAIN=nightly-2026-05-20
root="${TRUNK_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
mode=${1:-build}
profile="${TRUNK_PROFILE:-release}"

if ! rustup run "$TOOLCHAIN" rustc --print sysroot >/dev/null 2>&1 ||
  [[ ! -d "$(rustup run "$TOOLCHAIN" rustc --print sysroot)/lib/rustlib/src/rust/library" ]]; then
  echo "build-threads: $TOOLCHAIN with rust-src is missing (.ci/setup-web installs it);" \
    "the site is built without the threaded worker" >&2
  [[ "$mode" == build ]] && exit 0
  exit 1
fi

# Its own target folder: other flags and another toolchain than the rest of the workspace.
target="${CARGO_TARGET_DIR:-$root/target}/wasm-threads"
# Atomics and shared memory; the memory is imported (the pool's workers share it) and may
# grow to 4 GiB; the thread-local storage symbols are what wasm-bindgen's thread start-up
# calls. Relaxed SIMD is not in this build (see shared/src/model/matmul.rs).
export RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 \
-C link-arg=--shared-memory -C link-arg=--max-memory=4294967296 -C link-arg=--import-memory \
-C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size \
-C link-arg=--export=__tls_align -C link-arg=--export=__tls_base"
cargo_profile=()
if [[ "$profile" == release ]]; then cargo_profile=(--release); fi
args=("${cargo_profile[@]}" --manifest-path "$root/Cargo.toml" --target-dir "$target" -p web
  --bin worker-threads --features threads --target wasm32-unknown-unknown
  -Z build-std=panic_abort,std)
if [[ "$mode" == clippy ]]; then
  exec cargo "+$TOOLCHAIN" clippy "${args[@]}" -- -D warnings
fi
out="${TRUNK_STAGING_DIR:?run by trunk (TRUNK_STAGING_DIR names its staging folder)}"
echo "build-threads: building the threaded worker ($profile, $TOOLCHAIN)" >&2
cargo "+$TOOLCHAIN" build "${args[@]}"

wasm-bindgen --target web --no-typescript --out-dir "$out" --out-name worker-threads \
  "$target/wasm32-unknown-unknown/$profile/worker-threads.wasm"
cp "$root/web/worker-threads_loader.js" "$out/"
