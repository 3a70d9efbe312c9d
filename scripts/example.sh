#!/usr/bin/env bash
# Installs what ffdl needs, builds it, and runs the main example: the
# PyTorch digits job, trained on this machine by ffdl-run (the embedded
# default), after validating every example manifest.
source "$(dirname "$0")/lib.sh"
install_debian_packages
install_tensorflow_venv
build "$ROOT/build"
cd "$ROOT"
log "ffdl info"
./build/ffdl info
log "ffdl validate manifests/*"
./build/ffdl validate manifests/*.yml manifests/*.json manifests/*.lua
prepare_digits
log "ffdl-run manifests/pytorch-digits.yml"
./build/ffdl-run manifests/pytorch-digits.yml
