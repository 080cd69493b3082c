#!/usr/bin/env bash
# Installs what building and running the wallet needs on a Debian machine,
# skipping what is already present at the pinned version. Safe to run
# repeatedly; when everything is present it only checks (a few seconds).
#
#   Debian packages  curl, make, gcc, git, nodejs + npm, python3 + python3-venv,
#                    chromium (apt, sudo if not root), each only when missing
#   Rust             the toolchain pinned in rust-toolchain.toml (rustfmt, clippy,
#                    wasm32-unknown-unknown), worker-build, wasm-bindgen-cli
#   npm              wrangler, Node 22, esbuild, binaryen, ... (package-lock.json)
#   PyPI             localstripe and schemathesis, pinned, in .venv (git-ignored)
# docs/toolchain.md says why each pin is what it is.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7
# Must equal the wasm-bindgen version in Cargo.lock.
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
VENV=.venv
PYTHON_REQUIREMENTS=scripts/python-requirements.txt

step() { printf '==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_updated=0
apt_install() {
  # Try without `apt-get update` first: on a warm machine it is the slow part.
  if ! $SUDO apt-get install -y --no-install-recommends "$@"; then
    [ "$apt_updated" -eq 1 ] && return 1
    $SUDO apt-get update
    apt_updated=1
    $SUDO apt-get install -y --no-install-recommends "$@"
  fi
}

# --- Debian packages --------------------------------------------------------
# command → the Debian packages that provide it. cc links cargo's build
# scripts; Debian's node and npm only bootstrap npm install, which brings the
# pinned Node 22 into node_modules.
for pair in curl:"curl ca-certificates" make:make cc:"gcc libc6-dev" git:git node:nodejs npm:npm; do
  command=${pair%%:*}
  if command -v "$command" >/dev/null 2>&1; then
    ok "$command"
  else
    step "installing ${pair#*:} (apt) for $command"
    # shellcheck disable=SC2086 # the package list splits on purpose
    apt_install ${pair#*:}
  fi
done

# Browser tests drive Debian's Chromium (Playwright cannot download browsers here).
if [ -x /usr/bin/chromium ]; then
  ok "chromium"
else
  step "installing Debian's chromium for the browser tests (about 15 s)"
  apt_install chromium
fi

# --- Rust -------------------------------------------------------------------
if ! command -v rustup >/dev/null 2>&1; then
  echo "setup: rustup is missing; install it from https://rustup.rs, then run this again" >&2
  exit 1
fi
# rust-toolchain.toml pins the toolchain, its components and the wasm target:
# rustup installs whatever of it is missing when cargo first runs here. The
# explicit adds cover rustups that do not read the components list.
toolchain=$(rustup show active-toolchain 2>/dev/null | awk '{print $1}' || true)
if [ -z "$toolchain" ] || ! rustup toolchain list | grep -q "^$toolchain"; then
  step "installing the Rust toolchain pinned in rust-toolchain.toml"
  rustup toolchain install # no argument: the one rust-toolchain.toml names
  toolchain=$(rustup show active-toolchain | awk '{print $1}')
fi
installed=$(rustup component list --installed --toolchain "$toolchain")
for component in rustfmt clippy; do
  if grep -q "^$component" <<<"$installed"; then
    ok "$component ($toolchain)"
  else
    step "adding the $component component to $toolchain"
    rustup component add --toolchain "$toolchain" "$component"
  fi
done
if grep -qx 'rust-std-wasm32-unknown-unknown' <<<"$installed"; then
  ok "wasm32-unknown-unknown target ($toolchain)"
else
  step "adding the wasm32-unknown-unknown Rust target to $toolchain"
  rustup target add --toolchain "$toolchain" wasm32-unknown-unknown
fi

if worker-build --version 2>/dev/null | grep -qw "$WORKER_BUILD_VERSION"; then
  ok "worker-build $WORKER_BUILD_VERSION"
else
  step "installing worker-build $WORKER_BUILD_VERSION (about 3-4 minutes the first time)"
  cargo install --locked worker-build --version "$WORKER_BUILD_VERSION"
fi

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" = "$WASM_BINDGEN_VERSION" ]; then
  ok "wasm-bindgen-cli $WASM_BINDGEN_VERSION"
else
  step "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (about 2-3 minutes the first time)"
  # No --locked: its published lockfile names webpki-roots 1.0.11, which the
  # registry does not offer (docs/toolchain.md).
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

# --- npm --------------------------------------------------------------------
# npm ci refuses the lockfile's macOS/Windows workerd entries; install honours it.
if [ -x node_modules/.bin/wrangler ] && [ ! package-lock.json -nt node_modules/.install-stamp ]; then
  ok "npm packages"
else
  step "installing npm packages (wrangler, Node 22, esbuild, binaryen)"
  npm install --no-audit --no-fund
  touch node_modules/.install-stamp
fi

# The dashboard's browser libraries, copied from node_modules (pinned by hash).
node scripts/vendor-assets.mjs

# --- PyPI, in a virtual environment ---------------------------------------------
# Debian's python3 is "externally managed": pip refuses to install into it, and
# pip and venv are separate packages there. Everything Python runs from .venv.
if ! command -v python3 >/dev/null 2>&1; then
  step "installing python3 (apt)"
  apt_install python3 python3-venv
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  step "creating the Python virtual environment $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV"; then
    # Debian: `venv` without ensurepip fails until python3-venv is installed.
    rm -rf "$VENV"
    apt_install python3-venv python3-pip
    python3 -m venv "$VENV"
  fi
fi
# Each line of the requirements is `name==version`: compare with what is installed.
missing=()
while read -r requirement; do
  [[ -z "$requirement" || "$requirement" == \#* ]] && continue
  name=${requirement%%==*}
  want=${requirement#*==}
  have=$("$VENV/bin/python" -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' "$name" 2>/dev/null || true)
  if [ "$have" = "$want" ]; then ok "$name $want ($VENV)"; else missing+=("$requirement"); fi
done <"$PYTHON_REQUIREMENTS"
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]} into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PYTHON_REQUIREMENTS"
fi
