#!/usr/bin/env bash
# The main example with its data and results in S3: installs what ffdl and
# the test tools need (moto's S3 server, boto3 and the AWS CLI, in .venv),
# builds, then runs examples/s3_example.py, which writes the digits data
# set if it is missing, starts a local S3 server on 127.0.0.1:9000, puts
# the digits data into it with boto3, trains with `ffdl-run
# manifests/pytorch-digits-s3.yml`, lists the stored results with boto3 and
# stops the server. Its options (--port N, --keep) pass through.
source "$(dirname "$0")/lib.sh"
install_debian_packages
install_test_venv
build "$ROOT/build"
cd "$ROOT"
"$VENV/bin/python3" examples/s3_example.py "$@"
