#!/usr/bin/env bash
# setup.sh - install the Debian 12 packages that moecluster's build and tests need.
#
# Idempotent: packages already installed are left alone, and `apt-get update`
# runs only when something is missing. Run as root, or as a user with sudo.
#
#   scripts/setup.sh            install what is missing
#   scripts/setup.sh --check    only report what is missing (exit 1 if anything is)
set -euo pipefail

PACKAGES=(
    # toolchain
    build-essential cmake pkg-config git python3 python3-pip
    # JSON
    libjansson-dev
    # libFuzzer targets (clang's runtime) and llvm tools (llvm-symbolizer, llvm-profdata)
    clang libclang-rt-14-dev llvm
    # control plane: protobuf-c messages over ZeroMQ
    libprotobuf-c-dev protobuf-c-compiler libzmq3-dev
    # data plane on CPU ranks
    libopenmpi-dev openmpi-bin
    # checksums
    libxxhash-dev
    # YAML cluster configs
    libcyaml-dev
    # tokenizers: pre-tokenizer regexes (PCRE2) and Unicode normalization (utf8proc)
    libpcre2-dev libutf8proc-dev
    # the HTTP API (serve), and curl for its tests
    libmicrohttpd-dev curl
)

# Python packages the tests use as independent clients (never the engine):
# the `openai` client talks to `moecluster serve` in tests/serve; `gguf`
# writes llama.cpp files for tests/cli/test_gguf_model.py.
PY_PACKAGES=(openai gguf)

check_only=0
case "${1:-}" in
--check) check_only=1 ;;
"") ;;
-h | --help)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "setup.sh: unknown argument '$1' (try --help)" >&2
    exit 2
    ;;
esac

log() { echo "setup.sh: $*"; }

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: this script expects Debian 12 (dpkg and apt-get not found)" >&2
    exit 1
fi

if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    if [ "${ID:-}" != debian ] || [ "${VERSION_ID:-}" != 12 ]; then
        log "warning: written for Debian 12, this is ${PRETTY_NAME:-unknown}; trying anyway"
    fi
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    case "$status" in
    ii*) ;;
    *) missing+=("$pkg") ;;
    esac
done

# Python test clients: installed with pip for the python3 the tests run.
py_missing=()
for mod in "${PY_PACKAGES[@]}"; do
    python3 -c "import $mod" >/dev/null 2>&1 || py_missing+=("$mod")
done
install_py() {
    [ ${#py_missing[@]} -eq 0 ] && return 0
    if [ "$check_only" -eq 1 ]; then
        return 0
    fi
    log "pip install ${py_missing[*]}"
    # Debian's own python3 refuses system-wide pip installs (PEP 668); a
    # python3 from elsewhere (pyenv, a venv) takes them as they are.
    if ! python3 -m pip install --quiet "${py_missing[@]}" 2>/dev/null; then
        python3 -m pip install --quiet --break-system-packages "${py_missing[@]}"
    fi
}

if [ ${#missing[@]} -eq 0 ]; then
    if [ ${#py_missing[@]} -ne 0 ] && [ "$check_only" -eq 1 ]; then
        log "missing python packages: ${py_missing[*]}"
        exit 1
    fi
    install_py
    log "all ${#PACKAGES[@]} packages already installed${py_missing:+, python: ${py_missing[*]}}"
    exit 0
fi

log "missing: ${missing[*]}"
if [ "$check_only" -eq 1 ]; then
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
        log "not root, using sudo"
    else
        echo "setup.sh: need root to install packages and sudo is not available;" \
            "run as root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (unattended upgrades, a parallel setup) instead of failing.
APT_OPTS=(-o DPkg::Lock::Timeout=600)

run() {
    echo "+ $*"
    "$@"
}

run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" update
run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y \
    --no-install-recommends "${missing[@]}"

still=()
for pkg in "${missing[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    case "$status" in
    ii*) ;;
    *) still+=("$pkg") ;;
    esac
done
if [ ${#still[@]} -ne 0 ]; then
    echo "setup.sh: still not installed after apt-get: ${still[*]}" >&2
    exit 1
fi
log "installed: ${missing[*]}"
install_py
