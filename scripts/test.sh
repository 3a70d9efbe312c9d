#!/usr/bin/env bash
# Installs what the tests need, builds ffdl twice (plain, and with
# AddressSanitizer + UndefinedBehaviorSanitizer), and runs the whole suite on
# both builds: C unit tests and fuzz regressions (ctest), then the
# integration tests (pytest) against the real binaries.
source "$(dirname "$0")/lib.sh"
install_debian_packages
install_test_venv
install_tensorflow_venv

run_suite() {
  local dir="$1"
  log "ctest in $dir"
  (cd "$dir" && ctest --output-on-failure)
  log "policy tests"
  "$dir/ffdl" policy test "$ROOT/policies"
  log "pytest against $dir"
  # pytest exits 5 when it collects no test: that is a failure here too.
  FFDL_BUILD="$dir" "$VENV/bin/python3" -m pytest -q "$ROOT/tests/integration" || {
    local rc=$?
    [ $rc -eq 5 ] && echo "pytest collected no tests" >&2
    return $rc
  }
}

build "$ROOT/build"
# the plain build also runs the slow tests (a 1 GiB S3 round trip)
FFDL_SLOW_TESTS=1 run_suite "$ROOT/build"

if [ "${FFDL_SKIP_SANITIZERS:-0}" != "1" ]; then
  build "$ROOT/build-asan" -DFFDL_SANITIZE=ON
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 run_suite "$ROOT/build-asan"
fi
log "all tests passed"
