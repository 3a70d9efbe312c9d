#!/usr/bin/env bash
# Installs what ffdl needs, builds it, and runs the main example: every
# manifest in manifests/ validated, with its normalized job spec printed.
source "$(dirname "$0")/lib.sh"
install_debian_packages
build "$ROOT/build"
cd "$ROOT"
log "ffdl info"
./build/ffdl info
log "ffdl validate --print manifests/*"
./build/ffdl validate --print manifests/*.yml manifests/*.json manifests/*.lua
log "all example manifests are valid"
