#!/usr/bin/env bash
# Installs what building and running the wallet needs, skipping what is
# already present at the pinned version. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7
# Must equal the wasm-bindgen version in Cargo.lock.
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)

step() { printf '\n==> %s\n' "$*"; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  step "adding the wasm32-unknown-unknown Rust target"
  rustup target add wasm32-unknown-unknown
fi

if ! worker-build --version 2>/dev/null | grep -qw "$WORKER_BUILD_VERSION"; then
  step "installing worker-build $WORKER_BUILD_VERSION (about 3-4 minutes the first time)"
  cargo install worker-build --version "$WORKER_BUILD_VERSION"
fi

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  step "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (about 2-3 minutes the first time)"
  # No --locked: its lockfile names a crate version the registry lacks.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

# npm ci refuses the lockfile's macOS/Windows workerd entries; install honours it.
if [ ! -x node_modules/.bin/wrangler ] || [ package-lock.json -nt node_modules/.install-stamp ]; then
  step "installing npm packages (wrangler, Node 22, esbuild, binaryen)"
  npm install --no-audit --no-fund
  touch node_modules/.install-stamp
fi

# The dashboard's browser libraries, copied from node_modules (pinned by hash).
node scripts/vendor-assets.mjs

# Browser tests drive Debian's Chromium (Playwright cannot download browsers here).
if [ ! -x /usr/bin/chromium ]; then
  step "installing Debian's chromium for the browser tests (about 15 s)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y --no-install-recommends chromium \
    || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends chromium; }
fi

LOCALSTRIPE_VERSION=1.15.10
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("localstripe"))' 2>/dev/null)" != "$LOCALSTRIPE_VERSION" ]; then
  step "installing localstripe $LOCALSTRIPE_VERSION (the local Stripe emulator)"
  python3 -m pip install --quiet "localstripe==$LOCALSTRIPE_VERSION"
fi
