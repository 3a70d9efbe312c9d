#!/usr/bin/env python3
"""S3 transfers: ffdl's s3tool next to boto3's transfer manager, against a
local moto server, in the same run.

Four phases for each client: upload 1,000 files, download them, upload one
large file, download it. The files total FFDL_BENCH_S3_TOTAL (default 2GiB;
e.g. FFDL_BENCH_S3_TOTAL=64MiB for a quick run) and the large file has that
size too. Both clients use 8 parallel requests and 8 MiB parts.

Clients: s3tool with its default checksum ("ffdl": CRC32C in an aws-chunked
trailer, unsigned body; a download checks the CRC32C of each object smaller
than a part), s3tool with --checksum=sha256 over http ("ffdl sha256", the
opt-in that signs each body's SHA-256; uploads only: the checksum changes
nothing in a download), and boto3 with its defaults (over http it signs the
SHA-256 of each body and adds a CRC32; over https an unsigned body with a
CRC32 trailer). FFDL_BENCH_S3_TLS=1 runs everything over https, against moto
with a throwaway self-signed certificate that both clients trust.

After the clients, the large file's floor on this machine ("floor"): the
same bytes over one loopback connection with no HTTP and no S3, moved by
the plainest loop a client can run, its CPU measured like boto3's. Up: read
into a 512 KiB buffer, send it (to a sink that drops it). Down: sent with
sendfile, received into a 512 KiB buffer (with ffdl's 4 MiB receive
buffer) and written out in 256 KiB pieces, ffdl's write size (on this VM
larger writes get larger page-cache folios, which cost more; see
bench/README.md). A ratio to boto3 below the floor's cannot be reached by
any client here: those copies, TCP and the page cache are kernel work.
The download's floor runs twice: at full speed (2 GiB in about a second)
and held to the pace of ffdl's download from moto ("floor paced"). On this
VM, memory the page cache takes over a long download is memory the host
has taken back, so a receive through the page cache costs more per GiB at
moto's pace than at full speed; the paced floor is what any client
downloading at that pace pays.

For each phase it prints the wall time, the client's CPU seconds per GiB
moved (user + system, and the system part alone: the kernel's work for the
sockets and the page cache, which no client avoids) and its peak RSS:
  s3tool: from the child's rusage (os.wait4);
  boto3:  each phase runs in a child Python process that measures its own
          CPU time (resource.getrusage) around the transfer only, without
          the interpreter's start-up and imports; the peak RSS is the
          child's, from os.wait4 (it includes the interpreter, ~30-40 MiB).
The server's time counts in the wall time of both alike (moto is slow at
ranged GETs and CompleteMultipartUpload of large objects, and slows down as
it holds more: each client gets a freshly reset server); none of this
asserts anything (the machines are shared and noisy).

Both clients get the same memory and file-system conditions, which the
kernel's share of the CPU time depends on:
- every phase starts after a sync, so that no client's phase runs while
  the kernel writes back earlier data (in runs without it, the first
  client's download of 1,000 files took 1.4 to 2.6 times the kernel time
  it took as the second);
- every download starts right after the bench has written and deleted a
  scratch file a quarter larger than what it downloads, so that its page
  cache reuses memory the guest has just touched. On this VM, memory that
  stays free for a few seconds goes back to the host (virtio-balloon's
  free page reporting) and its next touch is a first touch again: writing
  512 MiB to the page cache cost 0.85 s of kernel time after 15 s, 0.12 s
  at once (a download that could not reuse memory cost ffdl 2.9-3.2 CPU
  s/GiB instead of 0.6, in copy_folio_from_iter);
- every upload starts with its files read into the page cache;
- every download is checked (SHA-256 of each file) once its phase is over,
  then the large file is deleted and the 1,000 files are truncated to
  nothing (their memory and blocks freed, as a deletion would) and deleted
  only at the end of the run. On a file system without a journal (as on
  this machine's ext4), creating a file skips every inode of its group
  deleted in the last minutes (ext4's recently_deleted(): 60 s, 360 s
  while the inode's table block is dirty, as creating files next to it
  keeps it), reading each one's inode-table entry on the way: when one
  client's 1,000 files had just been deleted, the other's download of
  1,000 files spent about half of its CPU in that search (perf:
  __ext4_new_inode), a cost of the bench's order, not of the client.
boto3 runs first.

    FFDL_BUILD=/tmp/build .venv/bin/python3 bench/s3_transfer.py
"""
import hashlib
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

MIB = 1024 * 1024
CONCURRENCY = 8
PART = 8 * MIB
FILES = 1000
FLOOR = "floor"  # the "client" of floor_phase
FLOOR_PACED = "floor paced"  # the same, held to the pace of ffdl's download
FLOOR_BUFFER = 512 * 1024  # as libcurl's receive buffer in ffdl's downloads
FLOOR_WRITE = 256 * 1024  # as WRITE_BUFFER in src/store/s3.c
FLOOR_BURST = 4 * MIB  # a paced sender's sendfile calls


def parse_size(text):
    units = {"": 1, "B": 1, "K": 1024, "KIB": 1024, "M": MIB, "MIB": MIB, "G": 1024 * MIB,
             "GIB": 1024 * MIB}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    return int(float(num) * units[t[len(num):]])


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def make_data(work, total):
    """FILES files of about total/FILES bytes each, and one file of TOTAL."""
    many = work / "many"
    many.mkdir()
    each = max(1, total // FILES)
    block = os.urandom(min(each, 4 * MIB))
    for i in range(FILES):
        with open(many / f"f{i:04d}.bin", "wb") as f:
            left = each
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
    big = work / "big.bin"
    block = os.urandom(4 * MIB)
    with open(big, "wb") as f:
        left = total
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    return many, big, each * FILES


def warm_memory(work, nbytes):
    """Writes and deletes NBYTES of scratch file: the memory the page cache
    will use next has just been touched (see the module's doc)."""
    block = b"\0" * (4 * MIB)
    scratch = work / "scratch"
    with open(scratch, "wb") as f:
        for _ in range(max(1, nbytes // len(block))):
            f.write(block)
    scratch.unlink()


def read_through(path):
    """Reads PATH (a file, or every file under it) into the page cache."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        with open(p, "rb") as f:
            while f.read(4 * MIB):
                pass


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(MIB), b""):
            h.update(b)
    return h.hexdigest()


def run_measured(cmd, env=None):
    """Runs CMD; returns (wall s, (user s, system s), peak RSS bytes, stdout),
    the CPU times and peak RSS from the child's rusage (os.wait4)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # read the pipes to the end, then reap with wait4 for the rusage
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return wall, (ru.ru_utime, ru.ru_stime), ru.ru_maxrss * 1024, out


def ffdl_range(size):
    """The length of the ranged GETs with which s3tool downloads a file of
    SIZE after its first part (range_size() in src/store/s3.c): about four
    per parallel request, rounded up to a MiB, from the part size to 64 MiB."""
    even = (size // (CONCURRENCY * 4) + MIB - 1) // MIB * MIB
    return min(max(even, PART), max(PART, 64 * MIB))


def boto3_phase(args):
    """In a child process: one boto3 phase; prints its CPU seconds."""
    endpoint, phase, bucket, local, ca, chunk = args
    chunk = int(chunk)
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    from s3transfer.manager import TransferManager
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test",
                          verify=ca or None,
                          config=Config(max_pool_connections=CONCURRENCY * 2,
                                        s3={"addressing_style": "path"}))
    config = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                            max_concurrency=CONCURRENCY)
    local = pathlib.Path(local)
    if phase == "download-many":
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="many/") for o in page.get("Contents", [])]
        local.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    if phase == "upload-many":
        with TransferManager(client, config) as tm:
            for f in sorted(local.iterdir()):
                tm.upload(str(f), bucket, f"many/{f.name}")
    elif phase == "download-many":
        with TransferManager(client, config) as tm:
            for key in keys:
                tm.download(bucket, key, str(local / key.split("/", 1)[1]))
    elif phase == "upload-big":
        client.upload_file(str(local), bucket, "big.bin", Config=config)
    elif phase == "download-big":
        client.download_file(bucket, "big.bin", str(local), Config=config)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"user": after.ru_utime - before.ru_utime,
                      "sys": after.ru_stime - before.ru_stime}))


def floor_child(args):
    """In a child process: moves PATH's bytes over one loopback connection
    to 127.0.0.1:PORT as plainly as a client can, and prints its CPU
    seconds. "down": recv into a buffer and write it out at once (with the
    receive buffer ffdl asks for on loopback); "up": read into a buffer and
    send it."""
    import socket
    direction, port, path = args[0], int(args[1]), args[2]
    buf = bytearray(FLOOR_BUFFER)
    view = memoryview(buf)
    before = resource.getrusage(resource.RUSAGE_SELF)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        if direction == "down":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
            with open(path, "wb", buffering=0) as f:
                while n := sock.recv_into(buf):
                    for at in range(0, n, FLOOR_WRITE):
                        f.write(view[at:min(n, at + FLOOR_WRITE)])
        else:
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    sock.sendall(view[:n])
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"user": after.ru_utime - before.ru_utime,
                      "sys": after.ru_stime - before.ru_stime}))


def send_paced(conn, f, size, rate):
    """Sends F's SIZE bytes on CONN with sendfile, at RATE bytes a second
    (in FLOOR_BURST steps) or, with RATE 0, as fast as the receiver takes
    them."""
    sent, start = 0, time.monotonic()
    while sent < size:
        step = size - sent if not rate else min(size - sent, FLOOR_BURST)
        sent += os.sendfile(conn.fileno(), f.fileno(), sent, step)
        ahead = sent / rate - (time.monotonic() - start) if rate else 0
        if ahead > 0:
            time.sleep(ahead)


def floor_phase(direction, path, rate=0):
    """A large transfer's floor on this machine, with no HTTP and no S3:
    floor_child moves PATH over loopback in a child whose CPU is measured
    like boto3's, while this process serves the other end (a download is
    sent with sendfile, at RATE bytes a second if RATE is not 0; an upload
    is received and dropped). Returns (wall, user, system, peak RSS)."""
    import socket
    import threading
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with conn:
            if direction == "down":
                with open(path.parent / "big.bin", "rb") as f:
                    send_paced(conn, f, os.fstat(f.fileno()).st_size, rate)
            else:
                sink = bytearray(FLOOR_BUFFER)
                while conn.recv_into(sink):
                    pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        wall, _, rss, out = run_measured(
            [sys.executable, __file__, "--floor", direction, str(port), str(path)])
    finally:
        listener.close()
    server.join(timeout=60)
    got = json.loads(out.decode().strip().splitlines()[-1])
    return wall, got["user"], got["sys"], rss


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--boto3-phase":
        return boto3_phase(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "--floor":
        return floor_child(sys.argv[2:])
    build = (ROOT / os.environ.get("FFDL_BUILD", "build")).resolve()
    s3tool = build / "s3tool"
    if not s3tool.exists():
        sys.exit(f"{s3tool} is missing: build it first (FFDL_BUILD names the build directory)")
    total = parse_size(os.environ.get("FFDL_BENCH_S3_TOTAL", "2GiB"))
    tls = os.environ.get("FFDL_BENCH_S3_TLS") == "1"
    work = pathlib.Path(tempfile.mkdtemp(prefix="ffdl-s3-bench-"))
    from s3server import MotoServer, self_signed_cert
    cert = self_signed_cert(work / "certs") if tls else None
    server = MotoServer(work / "moto", cert=cert)
    ca = str(cert[0]) if cert else ""
    rows = []
    try:
        print(f"writing {FILES} files of {human(total // FILES)} and one of {human(total)} "
              f"in {work}", file=sys.stderr)
        many, big, many_total = make_data(work, total)
        server.start()
        ep = server.endpoint
        tool = [str(s3tool), "--quiet", f"--concurrency={CONCURRENCY}", f"--part-size={PART}"]
        tool_env = dict(os.environ, AWS_CA_BUNDLE=ca)

        def phases(who):
            return [
                ("upload 1,000 files", many_total, ["upload-dir", who, "many", many],
                 ("upload-many", who, many)),
                ("download 1,000 files", many_total,
                 ["download-prefix", who, "many/", work / f"out-{who}-many"],
                 ("download-many", who, work / f"out-{who}-many")),
                (f"upload 1 file of {human(total)}", total, ["upload", who, "big.bin", big],
                 ("upload-big", who, big)),
                (f"download 1 file of {human(total)}", total,
                 ["download", who, "big.bin", work / f"out-{who}-big"],
                 ("download-big", who, work / f"out-{who}-big")),
            ]

        # (name, bucket, s3tool options or None for boto3, the phases it runs,
        # boto3's part size). boto3 first: what a client leaves behind (see
        # the module's doc) then weighs on ffdl, not on the client it is
        # compared with. "boto3 long" moves the large file in parts as long as
        # the ranges of ffdl's download (the same number of requests).
        every = ("upload", "download")
        clients = [("boto3", "boto", None, every, PART), ("ffdl", "ffdl", [], every, PART)]
        if not tls:
            clients.append(("ffdl sha256", "sha", ["--checksum=sha256"], ("upload",), PART))
        if ffdl_range(total) != PART:
            clients.append(("boto3 long", "long", None, ("upload 1 file", "download 1 file"),
                            ffdl_range(total)))
        py = sys.executable
        # each client gets a freshly reset server: moto slows down as it holds more
        for client, who, options, runs, chunk in clients:
            server.reset()
            subprocess.run([*tool, ep, "test", "test", "mb", who], check=True, env=tool_env)
            for name, nbytes, ffdl_args, boto_args in phases(who):
                if not name.startswith(runs):
                    continue
                if name.startswith("upload"):
                    read_through(pathlib.Path(ffdl_args[-1]))
                os.sync()  # no writeback of earlier data during the phase
                if name.startswith("download"):
                    warm_memory(work, nbytes + nbytes // 4)
                if options is not None:
                    wall, (user, system), rss, _ = run_measured(
                        [*tool, *options, ep, "test", "test", *map(str, ffdl_args)], tool_env)
                else:
                    wall, _, rss, out = run_measured(
                        [py, __file__, "--boto3-phase", ep, *map(str, boto_args), ca,
                         str(chunk)])
                    got = json.loads(out.decode().strip().splitlines()[-1])
                    user, system = got["user"], got["sys"]
                rows.append((name, client, nbytes, wall, user, system, rss))
                print(f"  {client}: {name}: {wall:.1f} s", file=sys.stderr)
                if name.startswith("download"):  # what came back is what went up
                    out = pathlib.Path(ffdl_args[-1])
                    if out.is_file():
                        assert sha256(out) == sha256(big), client
                        out.unlink()
                    else:  # emptied, deleted at the end (see the module's doc)
                        got = {p.name: sha256(p) for p in out.iterdir()}
                        assert got == {p.name: sha256(p) for p in many.iterdir()}, client
                        for f in out.iterdir():
                            os.truncate(f, 0)
        # what no client on this machine goes below (floor_phase)
        big_down = f"download 1 file of {human(total)}"
        ffdl_pace = next(total / r[3] for r in rows if r[:2] == (big_down, "ffdl"))
        for name, client, direction, path, rate in (
                (f"upload 1 file of {human(total)}", FLOOR, "up", big, 0),
                (big_down, FLOOR, "down", work / "out-floor-big", 0),
                (big_down, FLOOR_PACED, "down", work / "out-floor-big", ffdl_pace)):
            read_through(big)
            os.sync()
            if direction == "down":
                warm_memory(work, total + total // 4)
            wall, user, system, rss = floor_phase(direction, path, rate)
            rows.append((name, client, total, wall, user, system, rss))
            print(f"  {client}: {name}: {wall:.1f} s", file=sys.stderr)
            if direction == "down":
                assert sha256(path) == sha256(big), client
                path.unlink()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"S3 transfers against moto on loopback{' over https' if tls else ''}: "
          f"{CONCURRENCY} parallel requests, {PART // MIB} MiB parts")
    print(f"{'phase':<30} {'client':<12} {'wall s':>8} {'MiB/s':>8} {'CPU s/GiB':>10} "
          f"{'sys s/GiB':>10} {'/ boto3':>8} {'peak RSS':>10}")
    # ffdl first, the floor last
    order = [*sorted((c[0] for c in clients), key=lambda c: c.startswith("boto3")), FLOOR,
             FLOOR_PACED]
    boto = {r[0]: (r[4] + r[5]) / r[2] for r in rows if r[1] == "boto3"}
    for name, client, nbytes, wall, user, system, rss in sorted(
            rows, key=lambda r: ([p[0] for p in rows].index(r[0]), order.index(r[1]))):
        gib = nbytes / (1024 * MIB)
        ratio = f"{(user + system) / nbytes / boto[name]:.2f}" if client != "boto3" else ""
        print(f"{name:<30} {client:<12} {wall:>8.2f} {nbytes / MIB / wall:>8.1f} "
              f"{(user + system) / gib:>10.2f} {system / gib:>10.2f} {ratio:>8} {human(rss):>10}")
    long = {r[0]: r for r in rows if r[1] == "boto3 long"}
    for name, client, nbytes, wall, user, system, rss in rows:
        if client == "ffdl" and name in long and name.startswith("download"):
            other = long[name]
            print(f"ffdl / boto3 with {ffdl_range(total) // MIB} MiB parts, {name}: CPU "
                  f"{(user + system) / (other[4] + other[5]):.2f}, wall {wall / other[3]:.2f}")
    for which, pace in ((FLOOR, "at full speed"), (FLOOR_PACED, "at ffdl's pace")):
        floor = {r[0]: r for r in rows if r[1] == which}
        for name, client, nbytes, wall, user, system, rss in rows:
            if client == "ffdl" and name in floor:
                cpu = floor[name][4] + floor[name][5]
                print(f"{name}: the floor {pace} (one loopback connection, no HTTP) costs "
                      f"{cpu / boto[name] / nbytes:.2f} of boto3's CPU; ffdl costs "
                      f"{(user + system) / cpu:.2f} times it")


if __name__ == "__main__":
    main()
