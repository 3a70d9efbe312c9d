#!/usr/bin/env python3
"""The main example with its data and results in S3, on this machine.

Starts a local S3 server on 127.0.0.1 (moto's, from the test tools in
.venv, checking signatures against the one access key its IAM makes), puts
the digits data set into the bucket digits-data with boto3, and runs
ffdl-run on $FFDL_HOME/pytorch-digits-s3.yml: manifests/pytorch-digits-s3.yml
with that server's endpoint and keys. Then it lists what the job stored in
digits-results, again with boto3 (a client that is not ffdl), and stops the
server. scripts/example-s3.sh installs and builds first, then runs this
with .venv's interpreter.

    .venv/bin/python3 examples/s3_example.py [--port N] [--keep] [--build DIR]

--keep leaves the server running afterwards, for a look with another S3
tool or another run; it prints the commands, and the PID that stops it.
The server keeps everything in memory: stopping it forgets every bucket.
"""
import argparse
import os
import pathlib
import re
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# moto's server as a subprocess, started and stopped by its PID, with its own
# IAM (the test suite's harness)
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from s3server import MotoServer  # noqa: E402

MANIFEST = ROOT / "manifests" / "pytorch-digits-s3.yml"
DEFAULT_PORT = 9000
DATA_BUCKET, DATA_PREFIX, RESULTS_BUCKET = "digits-data", "digits/", "digits-results"


def say(text):
    print(f"\033[1m==> {text}\033[0m" if sys.stderr.isatty() else f"==> {text}",
          file=sys.stderr, flush=True)


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def digits_dir(home):
    """The digits data set as files, written if missing (as example.sh does)."""
    data = home / "datasets" / "digits"
    if not (data / "train.npz").is_file():
        say(f"writing the digits data set to {data}")
        subprocess.run(["/usr/bin/python3", str(ROOT / "examples" / "prepare_digits.py"),
                        str(data)], check=True)
    return data


def manifest_copy(home, endpoint, access, secret):
    """The example manifest with the local server's endpoint and keys."""
    text = MANIFEST.read_text()
    for field, value in (("auth_url", endpoint), ("user_name", access), ("password", secret)):
        text, n = re.subn(rf"^(\s+{field}:) .*$", rf"\1 {value}", text, count=1, flags=re.M)
        assert n == 1, f"{MANIFEST} has no {field}"
    text = text.replace("model: ../examples/", f"model: {ROOT / 'examples'}/")
    copy = home / "pytorch-digits-s3.yml"
    copy.write_text(text)
    copy.chmod(0o600)
    return copy


def keys_file(home, access, secret):
    """The keys as an environment file (0600), for another S3 tool."""
    path = home / "s3-example.env"
    path.write_text(f"AWS_ACCESS_KEY_ID={access}\nAWS_SECRET_ACCESS_KEY={secret}\n"
                    "AWS_DEFAULT_REGION=us-east-1\n")
    path.chmod(0o600)
    return path


def fill_data_bucket(s3, data):
    s3.create_bucket(Bucket=DATA_BUCKET)
    s3.create_bucket(Bucket=RESULTS_BUCKET)
    files = sorted(p for p in data.iterdir() if p.is_file())
    for f in files:
        s3.upload_file(str(f), DATA_BUCKET, DATA_PREFIX + f.name)
    say(f"boto3 put {len(files)} files into s3://{DATA_BUCKET}/{DATA_PREFIX}")


def show_results(s3):
    """Lists what the job stored, with boto3; returns the training id."""
    listing = s3.list_objects_v2(Bucket=RESULTS_BUCKET, Delimiter="/")
    ids = [p["Prefix"].rstrip("/") for p in listing.get("CommonPrefixes", [])]
    if len(ids) != 1:
        sys.exit(f"expected one job's results in s3://{RESULTS_BUCKET}/, found {ids}")
    tid = ids[0]
    say(f"what boto3 finds in s3://{RESULTS_BUCKET}/{tid}/")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=RESULTS_BUCKET,
                                                             Prefix=tid + "/"):
        for o in page.get("Contents", []):
            print(f"{o['Size']:>10}  {o['Key']}")
    log = s3.get_object(Bucket=RESULTS_BUCKET,
                        Key=f"{tid}/learner-1/training-log.txt")["Body"].read().decode()
    final = [line for line in log.splitlines() if "final test accuracy" in line]
    print(f"from {tid}/learner-1/training-log.txt: {final[-1] if final else '(no final line)'}")
    return tid


def aws_cli():
    """The AWS CLI that the test tools installed beside this interpreter
    (scripts/lib.sh), else whichever `aws` is on PATH."""
    beside = pathlib.Path(sys.executable).parent / "aws"
    return str(beside) if beside.exists() else "aws"


def other_tool_hint(server, manifest, keys, ffdl_run):
    print(f"""
The S3 server is still running (pid {server.proc.pid}); it checks signatures
against the keys it made, which are in {keys}. With another S3 tool:
  (set -a; . {keys}; {aws_cli()} --endpoint-url {server.endpoint} s3 ls --recursive s3://{RESULTS_BUCKET}/)
Train again, or change the keys to see a refusal: {ffdl_run} {manifest}
Stop it with: kill {server.proc.pid}   (it keeps everything in memory)""")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int,
                    default=int(os.environ.get("FFDL_S3_EXAMPLE_PORT", DEFAULT_PORT)),
                    help=f"the local S3 server's port (default {DEFAULT_PORT}, or "
                         "$FFDL_S3_EXAMPLE_PORT)")
    ap.add_argument("--keep", action="store_true", help="leave the S3 server running")
    ap.add_argument("--build", default=os.environ.get("FFDL_BUILD", "build"),
                    help="the build directory (default build, or $FFDL_BUILD)")
    args = ap.parse_args()
    ffdl_run = (ROOT / args.build / "ffdl-run").resolve()
    if not ffdl_run.exists():
        sys.exit(f"{ffdl_run} is missing: build first (scripts/example-s3.sh does)")
    if not port_is_free(args.port):
        sys.exit(f"127.0.0.1:{args.port} is in use: choose a free port with --port N "
                 "(or FFDL_S3_EXAMPLE_PORT)")
    home = pathlib.Path(os.environ.get("FFDL_HOME", ROOT / ".ffdl")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    data = digits_dir(home)
    # moto with signature checks: its IAM makes the only keys it accepts
    server = MotoServer(home, auth=True, port=args.port)
    say(f"starting a local S3 server (moto) on {server.endpoint}; its log: {server.log_path}")
    try:
        server.start()
    except (RuntimeError, TimeoutError) as e:
        sys.exit(f"the local S3 server did not start: {e}")
    print(f"S3 server pid {server.proc.pid}", file=sys.stderr, flush=True)
    keep = False
    try:
        access, secret = server.create_iam_keys("ffdl-example")
        s3 = server.client(access=access, secret=secret)
        fill_data_bucket(s3, data)
        manifest = manifest_copy(home, server.endpoint, access, secret)
        keys = keys_file(home, access, secret)
        say(f"ffdl-run {manifest} (manifests/pytorch-digits-s3.yml with this server's "
            "endpoint and keys)")
        env = dict(os.environ, FFDL_HOME=str(home))
        status = subprocess.run([str(ffdl_run), str(manifest)], env=env).returncode
        if status != 0:
            sys.exit(f"ffdl-run exited with {status}")
        show_results(s3)
        keep = args.keep
        if keep:
            other_tool_hint(server, manifest, keys, ffdl_run)
    finally:
        if not keep:
            server.stop()


if __name__ == "__main__":
    main()
