#!/usr/bin/env python3
"""The main example with its data and results in S3, on this machine.

Starts a local S3 server (moto's, from the test tools in .venv) on
127.0.0.1, puts the digits data set into the bucket digits-data with boto3,
runs `ffdl-run manifests/pytorch-digits-s3.yml`, then lists what the job
stored in digits-results, again with boto3 (a client that is not ffdl), and
stops the server. scripts/example-s3.sh installs and builds first, then
runs this with .venv's interpreter.

    .venv/bin/python3 examples/s3_example.py [--port N] [--keep] [--build DIR]

--keep leaves the server running afterwards, for a look with another S3
tool; it prints the commands, and the PID that stops it. The server keeps
everything in memory: stopping it forgets every bucket.
"""
import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "manifests" / "pytorch-digits-s3.yml"
# what the manifest names; a server on another port gets a copy of it
DEFAULT_PORT = 9000
ACCESS_KEY, SECRET_KEY, REGION = "ffdl-example", "ffdl-example-secret", "us-east-1"
DATA_BUCKET, DATA_PREFIX, RESULTS_BUCKET = "digits-data", "digits/", "digits-results"
START_TIMEOUT_S = 30


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


def answers(endpoint):
    try:
        with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_server(port, log_path):
    """moto_server on 127.0.0.1:PORT, its output in LOG_PATH; waits until it
    answers. Returns the process."""
    moto = pathlib.Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        sys.exit(f"{moto} is missing: run scripts/example-s3.sh, which installs it into .venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(endpoint):
        if proc.poll() is not None:
            sys.exit(f"moto_server exited with {proc.returncode}; its log: {log_path}")
        if time.monotonic() > deadline:
            stop_server(proc)
            sys.exit(f"moto_server did not answer on {endpoint} within {START_TIMEOUT_S} s; "
                     f"its log: {log_path}")
        time.sleep(0.1)  # a poll interval
    return proc


def stop_server(proc):
    """Stops the server by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def s3_client(endpoint):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        config=Config(s3={"addressing_style": "path"}))


def digits_dir(home):
    """The digits data set as files, written if missing (as example.sh does)."""
    data = home / "datasets" / "digits"
    if not (data / "train.npz").is_file():
        say(f"writing the digits data set to {data}")
        subprocess.run(["/usr/bin/python3", str(ROOT / "examples" / "prepare_digits.py"),
                        str(data)], check=True)
    return data


def manifest_for(port, home):
    """The example manifest, or a copy of it that names PORT."""
    if port == DEFAULT_PORT:
        return MANIFEST
    text = MANIFEST.read_text()
    text = text.replace(f"http://127.0.0.1:{DEFAULT_PORT}", f"http://127.0.0.1:{port}")
    text = text.replace("model: ../examples/", f"model: {ROOT / 'examples'}/")
    copy = home / f"pytorch-digits-s3-{port}.yml"
    copy.write_text(text)
    return copy


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


def other_tool_hint(endpoint, pid):
    print(f"""
The S3 server is still running (pid {pid}), for a look with any S3 tool:
  AWS_ACCESS_KEY_ID={ACCESS_KEY} AWS_SECRET_ACCESS_KEY={SECRET_KEY} \\
    aws --endpoint-url {endpoint} s3 ls --recursive s3://{RESULTS_BUCKET}/
Stop it with: kill {pid}   (it keeps everything in memory)""")


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
    endpoint = f"http://127.0.0.1:{args.port}"
    log_path = home / f"moto-example-{args.port}.log"
    say(f"starting a local S3 server (moto) on {endpoint}; its log: {log_path}")
    server = start_server(args.port, log_path)
    print(f"S3 server pid {server.pid}", file=sys.stderr, flush=True)
    keep = False
    try:
        s3 = s3_client(endpoint)
        fill_data_bucket(s3, data)
        manifest = manifest_for(args.port, home)
        say(f"ffdl-run {os.path.relpath(manifest, ROOT)}")
        env = dict(os.environ, FFDL_HOME=str(home))
        status = subprocess.run([str(ffdl_run), str(manifest)], env=env).returncode
        if status != 0:
            sys.exit(f"ffdl-run exited with {status}")
        show_results(s3)
        keep = args.keep
        if keep:
            other_tool_hint(endpoint, server.pid)
    finally:
        if not keep:
            stop_server(server)


if __name__ == "__main__":
    main()
