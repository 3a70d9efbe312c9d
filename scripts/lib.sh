# Shared by the set-up, example and test scripts. Source it; do not run it.
# Every install step of the project lives here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

# Debian packages: build tools, the libraries the runtime links, and
# PyTorch + scikit-learn for the example learners (Debian's torch imports
# only under /usr/bin/python3); wrk and iproute2's ss for the benchmarks
# and tests.
DEBIAN_PACKAGES=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  liblua5.4-dev libjansson-dev libyaml-dev libuv1-dev libssl-dev
  libcurl4-openssl-dev libsqlite3-dev libpcre2-dev libzip-dev libh2o-dev libexpat1-dev
  python3 python3-venv python3-pip
  python3-torch python3-sklearn python3-numpy
  wrk iproute2
)
# PyPI, for test tools only. The AWS CLI is an S3 client that is not ffdl,
# for the interop tests and the S3 example's hint. pyOpenSSL: botocore and
# the AWS CLI import it when present, and Debian's (23.0, seen through the
# system site packages) warns on import about the deprecations of the newer
# cryptography that moto brings; this one matches it.
PYPI_TEST_PACKAGES=(pytest==8.3.3 openapi-spec-validator==0.7.1 schemathesis==3.36.0 hypothesis==6.112.1
  "moto[server]==5.2.5" boto3==1.44.5 awscli==1.46.3 pyOpenSSL==26.4.0)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

missing_debian_packages() {
  local pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
}

install_debian_packages() {
  local missing
  missing="$(missing_debian_packages)"
  [ -z "$missing" ] && return 0
  log "installing Debian packages: $(echo $missing)"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
}

# ensure_venv DIR DESCRIPTION VENV_FLAGS PACKAGES...: a virtual environment on
# Debian's own interpreter with exactly PACKAGES installed; a stamp file
# makes reruns instant and notices when the list changes.
ensure_venv() {
  local dir="$1" what="$2" flags="$3"
  shift 3
  if [ ! -x "$dir/bin/python3" ]; then
    log "creating $dir"
    # shellcheck disable=SC2086
    /usr/bin/python3 -m venv $flags "$dir"
  fi
  local stamp="$dir/.ffdl-packages" want="$*"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing $what from PyPI: $want"
    "$dir/bin/python3" -m pip install -q --disable-pip-version-check "$@"
    echo "$want" > "$stamp"
  fi
}

# The test tools, with Debian's site packages visible (Debian's torch
# imports only under /usr/bin/python3).
install_test_venv() {
  ensure_venv "$VENV" "test tools" --system-site-packages "${PYPI_TEST_PACKAGES[@]}"
}

# TensorFlow for the tensorflow-digits example learner. A separate virtual
# environment on Debian's interpreter, WITHOUT the system site packages, so
# that Debian's numpy and torch cannot clash with the wheels TensorFlow wants.
VENV_TF="$ROOT/.venv-tf"
PYPI_TF_PACKAGES=(tensorflow-cpu==2.18.1 keras==3.8.0 numpy==2.0.2)

install_tensorflow_venv() {
  ensure_venv "$VENV_TF" "TensorFlow (a large download)" "" "${PYPI_TF_PACKAGES[@]}"
}

# build DIR [cmake options...]
build() {
  local dir="$1"
  shift
  log "building in $dir $*"
  cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" > "$dir.cmake.log" 2>&1 ||
    { cat "$dir.cmake.log"; return 1; }
  cmake --build "$dir" -j "$(nproc)"
}

# The digits data set as files in the embedded local data store
# ($FFDL_HOME/datasets/digits), for the example manifests.
prepare_digits() {
  local home="${FFDL_HOME:-$ROOT/.ffdl}"
  if [ ! -f "$home/datasets/digits/train.npz" ]; then
    log "writing the digits data set to $home/datasets/digits"
    /usr/bin/python3 "$ROOT/examples/prepare_digits.py" "$home/datasets/digits"
  fi
}
