"""The S3 client (src/store/s3.c) through the real s3tool binary, against
moto's server on loopback: round trips, key encoding, pagination,
multipart, interop with boto3, credentials, errors, and failures injected
with a proxy that cuts connections or with the server killed by its PID."""
import hashlib
import os
import pathlib
import re
import subprocess
import threading
import time
import uuid

import pytest

from conftest import BUILD

boto3 = pytest.importorskip("boto3", reason="boto3 is installed by scripts/lib.sh (test venv)")
pytest.importorskip("moto", reason="moto[server] is installed by scripts/lib.sh (test venv)")

from s3server import CutProxy, FakeS3, MotoServer, self_signed_cert, wait_until  # noqa: E402

MIB = 1024 * 1024
S3TOOL = BUILD / "s3tool"
# keys that need every part of the URI encoding
ODD_KEYS = ["with space.txt", "plus+sign", "a b+c/d%20e", "unicodé/日本語/ファイル.bin",
            "sym~!*'()$,;=@", "q?uery&x=1#frag", "dots/../and/./dots", "emoji-\U0001F600"]


def s3tool(endpoint, *args, access="test", secret="test", options=(), timeout=120, env=None,
           input=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([str(S3TOOL), *options, endpoint, access, secret, *map(str, args)],
                          capture_output=True, timeout=timeout, env=full_env, input=input)


def ok(p):
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def random_file(path, size, seed=0):
    """SIZE pseudo-random bytes, written in 1 MiB blocks."""
    import random
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(MIB, left)
            f.write(rng.randbytes(n))
            left -= n
    return path


def crc32c_b64(data):
    """S3's x-amz-checksum-crc32c of DATA (crcmod, independent of ffdl)."""
    import base64
    import crcmod.predefined
    crc = crcmod.predefined.mkPredefinedCrcFun("crc-32c")(data)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def decode_aws_chunked(body):
    """An aws-chunked body (STREAMING-UNSIGNED-PAYLOAD-TRAILER): (data,
    trailer headers, chunk sizes), checking the framing as it goes."""
    data, sizes, pos = bytearray(), [], 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol], 16)
        pos = eol + 2
        if size == 0:
            break
        sizes.append(size)
        data += body[pos:pos + size]
        assert body[pos + size:pos + size + 2] == b"\r\n", "a chunk must end with CRLF"
        pos += size + 2
    trailers = {}
    while not body.startswith(b"\r\n", pos):
        eol = body.index(b"\r\n", pos)
        name, value = body[pos:eol].decode().split(":", 1)
        trailers[name] = value
        pos = eol + 2
    assert pos + 2 == len(body), "nothing may follow the trailer's empty line"
    return bytes(data), trailers, sizes


def multipart_etag(path, part_size):
    """S3's ETag of a multipart object: MD5 of the parts' MD5s, "-N"."""
    digests = []
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(part_size), b""):
            digests.append(hashlib.md5(block).digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


@pytest.fixture(scope="module", autouse=True)
def built():
    if not S3TOOL.exists():
        pytest.fail(f"{S3TOOL} is missing: build it (cmake --build {BUILD})")


@pytest.fixture(scope="module")
def moto_auth(tmp_path_factory):
    """A server that checks SigV4 signatures against its own IAM."""
    server = MotoServer(tmp_path_factory.mktemp("moto-auth"), auth=True).start()
    server.keys = server.create_iam_keys()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto):
    name = f"b-{uuid.uuid4().hex[:12]}"
    ok(s3tool(moto.endpoint, "mb", name))
    return name


@pytest.fixture
def boto(moto):
    return moto.client()


def test_put_get_round_trip(moto, bucket, tmp_path):
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello, s3\n" * 100)
    ok(s3tool(moto.endpoint, "put", bucket, "greeting.txt", src))
    got = ok(s3tool(moto.endpoint, "get", bucket, "greeting.txt"))
    assert got.stdout == src.read_bytes()
    listing = ok(s3tool(moto.endpoint, "list", bucket)).stdout.decode()
    assert listing == f"1000\t{hashlib.md5(src.read_bytes()).hexdigest()}\tgreeting.txt\n"


def test_uploads_keep_s3s_default_content_type(moto, bucket, tmp_path, boto):
    # small bodies go as a POST whose method is PUT, and a multipart upload
    # starts with a POST: neither may take libcurl's form content type
    src = random_file(tmp_path / "six.bin", 6 * MIB, seed=5)
    ok(s3tool(moto.endpoint, "upload", bucket, "multi", src, options=["--part-size=5MiB"]))
    ok(s3tool(moto.endpoint, "upload", bucket, "single", src))
    ok(s3tool(moto.endpoint, "put", bucket, "small", "-", input=b"x" * 1000))
    for key in ("multi", "single", "small"):
        assert boto.head_object(Bucket=bucket, Key=key)["ContentType"] == "binary/octet-stream"


def test_put_from_stdin_and_empty_object(moto, bucket, tmp_path, boto):
    ok(s3tool(moto.endpoint, "put", bucket, "empty", "-", input=b""))
    assert boto.head_object(Bucket=bucket, Key="empty")["ContentLength"] == 0
    out = tmp_path / "empty.out"
    ok(s3tool(moto.endpoint, "download", bucket, "empty", out))
    assert out.read_bytes() == b""
    assert not (tmp_path / "empty.out.partial").exists()


@pytest.mark.parametrize("key", ODD_KEYS)
def test_odd_keys_round_trip_and_interop(moto, bucket, boto, tmp_path, key):
    src = tmp_path / "src"
    src.write_bytes(key.encode() * 10)
    ok(s3tool(moto.endpoint, "upload", bucket, key, src))
    assert boto.get_object(Bucket=bucket, Key=key)["Body"].read() == src.read_bytes()
    out = tmp_path / "out"
    ok(s3tool(moto.endpoint, "download", bucket, key, out))
    assert out.read_bytes() == src.read_bytes()
    listed = ok(s3tool(moto.endpoint, "list", bucket)).stdout.decode().splitlines()
    assert [line.split("\t", 2)[2] for line in listed] == [key]
    # and the other way: boto3 writes, ffdl reads
    boto.put_object(Bucket=bucket, Key=key + ".b", Body=b"from boto3")
    assert ok(s3tool(moto.endpoint, "get", bucket, key + ".b")).stdout == b"from boto3"


def test_list_paginates_past_1000_keys(moto, bucket, boto, tmp_path):
    tree = tmp_path / "tree"
    names = [f"d{i % 7}/file {i:04d}+x.txt" for i in range(1203)]
    for name in names:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name)
    ok(s3tool(moto.endpoint, "upload-dir", bucket, "many", tree, options=["--quiet"]))
    listed = ok(s3tool(moto.endpoint, "list", bucket)).stdout.decode().splitlines()
    keys = [line.split("\t", 2)[2] for line in listed]
    assert keys == sorted(f"many/{n}" for n in names)
    # the same as boto3's paginator
    pages = boto.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    assert keys == [o["Key"] for page in pages for o in page.get("Contents", [])]
    # a prefix, on a page boundary of its own
    d3 = ok(s3tool(moto.endpoint, "list", bucket, "many/d3/")).stdout.decode().splitlines()
    assert len(d3) == len([n for n in names if n.startswith("d3/")])
    # more than one request carried a continuation token
    assert "continuation-token=" in moto.log_path.read_text()


def test_list_json(moto, bucket, boto):
    boto.put_object(Bucket=bucket, Key="k 1", Body=b"abc")
    import json
    out = json.loads(ok(s3tool(moto.endpoint, "list", bucket, options=["--json"])).stdout)
    assert out == [{"key": "k 1", "size": 3, "etag": hashlib.md5(b"abc").hexdigest()}]


def test_multipart_upload_checksum_end_to_end(moto, bucket, boto, tmp_path):
    src = random_file(tmp_path / "big.bin", 40 * MIB + 12345, seed=1)
    p = ok(s3tool(moto.endpoint, "upload", bucket, "big/obj.bin", src,
                  options=["--part-size=5MiB", "--concurrency=4"]))
    head = boto.head_object(Bucket=bucket, Key="big/obj.bin")
    assert head["ContentLength"] == src.stat().st_size
    # S3's multipart ETag proves each part arrived intact, in order
    assert head["ETag"].strip('"') == multipart_etag(src, 5 * MIB)
    assert head["ETag"].strip('"').endswith("-9")
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # read back by boto3 and by ffdl (ranged parallel GETs)
    via_boto = tmp_path / "via-boto"
    boto.download_file(bucket, "big/obj.bin", str(via_boto))
    via_ffdl = tmp_path / "via-ffdl"
    ok(s3tool(moto.endpoint, "download", bucket, "big/obj.bin", via_ffdl,
              options=["--part-size=5MiB"]))
    assert sha256(via_boto) == sha256(src) == sha256(via_ffdl)
    assert not pathlib.Path(str(via_ffdl) + ".partial").exists()
    assert "upload" in p.stderr.decode() or p.stderr == b""


def test_boto3_multipart_upload_ffdl_download(moto, bucket, boto, tmp_path):
    from boto3.s3.transfer import TransferConfig
    src = random_file(tmp_path / "boto.bin", 23 * MIB + 7, seed=2)
    boto.upload_file(str(src), bucket, "from boto/x+y.bin",
                     Config=TransferConfig(multipart_threshold=5 * MIB,
                                           multipart_chunksize=5 * MIB))
    out = tmp_path / "sub" / "out.bin"
    out.parent.mkdir()
    ok(s3tool(moto.endpoint, "download", bucket, "from boto/x+y.bin", out,
              options=["--part-size=6MiB", "--concurrency=3"]))
    assert sha256(out) == sha256(src)


def test_upload_dir_download_prefix_round_trip(moto, bucket, tmp_path):
    tree = tmp_path / "tree"
    files = {"a.txt": b"a", "sub dir/b+c.bin": os.urandom(6 * MIB + 3),
             "sub dir/deeper/ü.txt": b"u" * 1000, "empty": b""}
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    ok(s3tool(moto.endpoint, "upload-dir", bucket, "run/1/", tree,
              options=["--part-size=5MiB"]))
    out = tmp_path / "out"
    p = ok(s3tool(moto.endpoint, "download-prefix", bucket, "run/1", out,
                  options=["--part-size=5MiB"]))
    got = {str(f.relative_to(out)): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    assert got == files
    assert p.returncode == 0


def test_a_prefix_without_slash_is_a_folder_not_a_string_prefix(moto, bucket, boto, tmp_path):
    """"sets/digits" takes sets/digits/... (as `aws s3 cp --recursive`
    does), not the neighbouring folder sets/digitsX/, whose keys would land
    as X/... in the target."""
    for key in ("sets/digits/train.npz", "sets/digits/sub/test.npz", "sets/digitsX/junk.txt",
                "sets/digits.md"):
        boto.put_object(Bucket=bucket, Key=key, Body=key.encode())
    out = tmp_path / "folder"
    ok(s3tool(moto.endpoint, "download-prefix", bucket, "sets/digits", out))
    got = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert got == ["sub/test.npz", "train.npz"]
    # a prefix that names one object takes that object
    one = tmp_path / "one"
    ok(s3tool(moto.endpoint, "download-prefix", bucket, "sets/digits.md", one))
    assert [f.name for f in one.iterdir()] == ["digits.md"]
    assert (one / "digits.md").read_bytes() == b"sets/digits.md"


def test_download_prefix_refuses_keys_escaping_the_directory(moto, bucket, boto, tmp_path):
    boto.put_object(Bucket=bucket, Key="p/ok.txt", Body=b"fine")
    boto.put_object(Bucket=bucket, Key="p/../../escape.txt", Body=b"evil")
    out = tmp_path / "deep" / "out"
    p = s3tool(moto.endpoint, "download-prefix", bucket, "p/", out)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "UnsafeKey" in err and "p/../../escape.txt" in err
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "deep" / "escape.txt").exists()


def test_virtual_host_style(moto, bucket, boto, tmp_path):
    # bucket.localhost: libcurl resolves *.localhost to the loopback itself
    vhost = f"http://localhost:{moto.port}"
    src = tmp_path / "v.bin"
    src.write_bytes(os.urandom(7 * MIB))
    ok(s3tool(vhost, "upload", bucket, "v key+.bin", src,
              options=["--virtual-host", "--part-size=5MiB"]))
    assert boto.get_object(Bucket=bucket, Key="v key+.bin")["Body"].read() == src.read_bytes()
    listed = ok(s3tool(vhost, "list", bucket, options=["--virtual-host"])).stdout.decode()
    assert "v key+.bin" in listed
    p = ok(s3tool(vhost, "get", bucket, "v key+.bin", options=["--virtual-host"],
                  env={"FFDL_LOG": "debug"}))
    assert p.stdout == src.read_bytes()
    assert f"GET http://{bucket}.localhost:{moto.port}/v%20key%2B.bin" in p.stderr.decode()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """moto over HTTPS with a throwaway self-signed certificate: the
    server, and the PEM file a client must trust (its own CA)."""
    certs = tmp_path_factory.mktemp("tls")
    cert = self_signed_cert(certs)
    server = MotoServer(tmp_path_factory.mktemp("moto-tls"), cert=cert).start()
    server.ca = cert[0]
    server.other_ca = self_signed_cert(certs, "other")[0]  # trusted by nothing here
    yield server
    server.stop()


def test_https_round_trip_trusting_the_ca_bundle(tls, tmp_path):
    """AWS_CA_BUNDLE (or --ca-bundle) names the CA: uploads and downloads
    over https, multipart and directories, read back byte for byte, by
    ffdl and by boto3 (which checks the certificate too)."""
    ep = tls.endpoint
    assert ep.startswith("https://127.0.0.1:")
    env = {"AWS_CA_BUNDLE": str(tls.ca)}
    ok(s3tool(ep, "mb", "tls-data", env=env))
    src = random_file(tmp_path / "big.bin", 12 * MIB + 777, seed=11)
    ok(s3tool(ep, "upload", "tls-data", "big/x+y.bin", src, env=env,
              options=["--part-size=5MiB"]))
    tree = tmp_path / "tree"
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(300_000), "empty": b""}
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    # the option instead of the environment
    ok(s3tool(ep, "upload-dir", "tls-data", "tree", tree, options=[f"--ca-bundle={tls.ca}"],
              env={"AWS_CA_BUNDLE": ""}))
    out = tmp_path / "big.out"
    ok(s3tool(ep, "download", "tls-data", "big/x+y.bin", out, env=env,
              options=["--part-size=5MiB"]))
    assert sha256(out) == sha256(src)
    got_dir = tmp_path / "tree.out"
    ok(s3tool(ep, "download-prefix", "tls-data", "tree/", got_dir, env=env))
    got = {str(f.relative_to(got_dir)): f.read_bytes() for f in got_dir.rglob("*") if f.is_file()}
    assert got == files
    boto = tls.client()  # verify= the same CA
    assert hashlib.sha256(boto.get_object(Bucket="tls-data", Key="big/x+y.bin")["Body"].read()) \
        .hexdigest() == sha256(src)
    head = boto.head_object(Bucket="tls-data", Key="big/x+y.bin")
    assert head["ContentLength"] == src.stat().st_size
    assert head["ETag"].strip('"') == multipart_etag(src, 5 * MIB)
    assert boto.list_multipart_uploads(Bucket="tls-data").get("Uploads", []) == []


def test_https_without_the_ca_bundle_is_refused(tls, tmp_path):
    """Verification is on by default: without the CA (or with another
    one) the request is refused at once, with what to do about it, and
    nothing reaches the server."""
    src = tmp_path / "f"
    src.write_bytes(b"never sent")
    for env, options in (({"AWS_CA_BUNDLE": ""}, []),
                         ({"AWS_CA_BUNDLE": str(tls.other_ca)}, []),
                         ({"AWS_CA_BUNDLE": ""}, [f"--ca-bundle={tls.other_ca}"])):
        p = s3tool(tls.endpoint, "upload", "refused", "k", src, env={**env, "FFDL_LOG": "info"},
                   options=["--retry-base-ms=5", *options])
        assert p.returncode == 1, p.stderr
        err = p.stderr.decode()
        assert "upload failed: S3 ConnectionError" in err, err
        assert "certificate" in err and "AWS_CA_BUNDLE" in err, err
        assert "retry" not in err  # a certificate problem is not retried
    missing = tmp_path / "no-such-ca.pem"
    p = s3tool(tls.endpoint, "mb", "refused", env={"AWS_CA_BUNDLE": str(missing)})
    assert p.returncode == 1
    assert f"cannot use the CA bundle {missing}" in p.stderr.decode(), p.stderr
    names = [b["Name"] for b in tls.client().list_buckets().get("Buckets", [])]
    assert "refused" not in names


def count_opens(path, action):
    """Runs ACTION; returns how many times PATH was opened meanwhile, by
    anyone (inotify's IN_OPEN events; closes are watched too, because the
    kernel merges an event into an unread one just like it)."""
    import ctypes
    import ctypes.util
    import struct
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        in_open, in_close_nowrite = 0x20, 0x10
        assert libc.inotify_add_watch(fd, str(path).encode(), in_open | in_close_nowrite) >= 0
        action()
        opens = 0
        while True:
            try:
                events = os.read(fd, 65536)
            except BlockingIOError:
                return opens
            at = 0
            while at < len(events):  # struct inotify_event: wd, mask, cookie, len, name
                _, mask, _, name_len = struct.unpack_from("iIII", events, at)
                opens += bool(mask & in_open)
                at += 16 + name_len
    finally:
        os.close(fd)


def test_https_reads_the_ca_bundle_once_for_all_connections(tls, tmp_path):
    """The CA file is read for a client's first connection only: moto
    closes every connection, so 30 files go up over 30 connections, and
    the certificate store built for the first serves them all. With a CA
    directory set as well (Debian's libcurl default), libcurl would parse
    the file again for each one: ~24 ms of CPU per connection with the
    system bundle (see trust_one_ca_file)."""
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(tls.ca.read_bytes())
    tree = tmp_path / "many"
    tree.mkdir()
    for i in range(30):
        (tree / f"f{i}").write_bytes(b"small file %d" % i)
    options = [f"--ca-bundle={bundle}", "--concurrency=4"]
    ok(s3tool(tls.endpoint, "mb", "tls-once", options=options))
    opens = count_opens(bundle, lambda: ok(s3tool(tls.endpoint, "upload-dir", "tls-once", "t",
                                                  tree, options=options)))
    assert opens == 1
    listed = ok(s3tool(tls.endpoint, "list", "tls-once", "t/", options=options)).stdout
    assert len(listed.splitlines()) == 30


def test_https_with_motos_adhoc_certificate_is_refused(tmp_path):
    """moto's own ad-hoc certificate is refused the same way (libcurl's
    default verification, never turned off)."""
    server = MotoServer(tmp_path / "moto-tls", ssl=True).start()
    try:
        assert server.endpoint.startswith("https://")
        p = s3tool(server.endpoint, "mb", "tls-bucket", options=["--retry-base-ms=5"],
                   env={"FFDL_LOG": "info", "AWS_CA_BUNDLE": ""})
        assert p.returncode == 1
        err = p.stderr.decode()
        assert "mb failed: S3 ConnectionError" in err and "certificate" in err, err
        assert "retry" not in err
    finally:
        server.stop()


def test_signature_checked_right_keys_work(moto_auth, tmp_path):
    access, secret = moto_auth.keys
    ep = moto_auth.endpoint
    ok(s3tool(ep, "mb", "signed", access=access, secret=secret))
    src = random_file(tmp_path / "s.bin", 11 * MIB, seed=3)
    for i, key in enumerate(["plain", *ODD_KEYS[:5]]):
        # both checksums: the aws-chunked headers are signed as well
        checksum = "crc32c" if i % 2 else "sha256"
        ok(s3tool(ep, "upload", "signed", key, src, access=access, secret=secret,
                  options=["--part-size=5MiB", f"--checksum={checksum}"]))
        out = tmp_path / "out"
        ok(s3tool(ep, "download", "signed", key, out, access=access, secret=secret,
                  options=["--part-size=5MiB"]))
        assert sha256(out) == sha256(src)
    # a body of at most 1 MiB is sent without "Expect: 100-continue" (as a
    # POST whose method is PUT): signed all the same, with either checksum
    small = random_file(tmp_path / "small.bin", 300 * 1024, seed=4)
    for checksum in ("sha256", "crc32c"):
        ok(s3tool(ep, "upload", "signed", f"small-{checksum}", small, access=access,
                  secret=secret, options=[f"--checksum={checksum}"]))
        out = tmp_path / "small.out"
        ok(s3tool(ep, "get", "signed", f"small-{checksum}", out, access=access, secret=secret))
        assert sha256(out) == sha256(small)
    listed = ok(s3tool(ep, "list", "signed", "a b", access=access, secret=secret)).stdout
    assert listed.decode().split("\t")[2].strip() == "a b+c/d%20e"
    # the secret may come from the environment
    ok(s3tool(ep, "get", "signed", "plain", access=access, secret="-",
              env={"S3_SECRET_KEY": secret}))


def test_signature_checked_wrong_secret_fails_with_s3s_code(moto_auth):
    access, secret = moto_auth.keys
    wrong = "not-the-secret-" + uuid.uuid4().hex
    p = s3tool(moto_auth.endpoint, "list", "signed-missing", access=access, secret=wrong,
               env={"FFDL_LOG": "debug"})
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "SignatureDoesNotMatch (HTTP 403)" in err
    assert wrong not in err and wrong not in p.stdout.decode()
    p = s3tool(moto_auth.endpoint, "mb", "other", access="AKIAEXAMPLEEXAMPLE00", secret=secret)
    assert p.returncode == 1
    assert "InvalidAccessKeyId (HTTP 403)" in p.stderr.decode()
    assert secret not in p.stderr.decode()


def test_missing_bucket_names_the_bucket(moto, tmp_path):
    name = f"missing-{uuid.uuid4().hex[:8]}"
    for args in (["list", name], ["get", name, "k"],
                 ["download", name, "k", tmp_path / "x"]):
        p = s3tool(moto.endpoint, *args)
        assert p.returncode == 1, args
        err = p.stderr.decode()
        assert "NoSuchBucket (HTTP 404)" in err, err
        assert f"bucket {name}" in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_missing_key_and_missing_file(moto, bucket, tmp_path):
    p = s3tool(moto.endpoint, "download", bucket, "nope", tmp_path / "nope")
    assert p.returncode == 1
    assert "NoSuchKey (HTTP 404)" in p.stderr.decode()
    assert list(tmp_path.iterdir()) == []
    p = s3tool(moto.endpoint, "upload", bucket, "k", tmp_path / "does-not-exist")
    assert p.returncode == 1
    assert f"cannot open {tmp_path / 'does-not-exist'}: No such file" in p.stderr.decode()


@pytest.mark.parametrize("checksum", ["sha256", "crc32c"])
def test_retry_survives_one_cut_connection(moto, bucket, boto, tmp_path, checksum):
    proxy = CutProxy(moto.port)
    try:
        src = random_file(tmp_path / "r.bin", 17 * MIB, seed=4)
        proxy.cut_after(2 * MIB, times=1, direction="up")
        proxy.throttle(16 * MIB)  # slow enough for a progress line after the cut
        p = ok(s3tool(proxy.endpoint, "upload", bucket, "retried", src,
                      options=["--part-size=5MiB", "--retry-base-ms=20", f"--checksum={checksum}"]))
        assert proxy.cuts == 1
        # the progress line after the cut says so
        assert re.search(r"^s3tool: upload: .* \(retrying\)$", p.stderr.decode(), re.M), p.stderr
        proxy.throttle(None)
        assert boto.head_object(Bucket=bucket, Key="retried")["ETag"].strip('"') == \
            multipart_etag(src, 5 * MIB)
        proxy.cut_after(3 * MIB, times=1, direction="down")
        out = tmp_path / "r.out"
        ok(s3tool(proxy.endpoint, "download", bucket, "retried", out,
                  options=["--part-size=5MiB", "--retry-base-ms=20"]))
        assert proxy.cuts == 2
        assert sha256(out) == sha256(src)
    finally:
        proxy.close()


def test_large_downloads_ask_for_fewer_longer_ranges(moto, bucket, boto, tmp_path):
    """After the first part, a download asks for about four ranges per
    parallel request, each at least a part: 40 MiB in 10 MiB ranges with one
    request at a time, in 5 MiB parts with eight."""
    src = random_file(tmp_path / "l.bin", 40 * MIB, seed=8)
    boto.upload_file(str(src), bucket, "long")
    for concurrency, step in ((1, 10 * MIB), (8, 5 * MIB)):
        proxy = CutProxy(moto.port)
        try:
            out = tmp_path / f"l{concurrency}.out"
            ok(s3tool(proxy.endpoint, "download", bucket, "long", out,
                      options=["--part-size=5MiB", f"--concurrency={concurrency}"]))
            assert sha256(out) == sha256(src)
            starts = [0, *range(5 * MIB, 40 * MIB, step)]
            want = [(a, min(b, 40 * MIB) - 1) for a, b in zip(starts, [*starts[1:], 40 * MIB])]
            assert sorted(proxy.ranges) == want, (concurrency, proxy.ranges)
        finally:
            proxy.close()


def test_a_cut_range_resumes_where_it_stopped(moto, bucket, boto, tmp_path):
    """Every connection that carries more than 7 MiB down is cut. The first
    GET (5 MiB) passes; each 10 MiB range is cut once and its retry asks
    only for the 3 MiB it lacks, so the download completes. Restarting each
    range from its first byte, as before, would be cut every time."""
    src = random_file(tmp_path / "cut.bin", 40 * MIB, seed=9)
    boto.upload_file(str(src), bucket, "resumed")
    proxy = CutProxy(moto.port)
    try:
        proxy.cut_after(7 * MIB, times=None, direction="down")
        out = tmp_path / "cut.out"
        ok(s3tool(proxy.endpoint, "download", bucket, "resumed", out,
                  options=["--part-size=5MiB", "--concurrency=1", "--max-retries=1",
                           "--retry-base-ms=10"]))
        assert sha256(out) == sha256(src)
        assert proxy.cuts == 3
        fresh = [(0, 5 * MIB - 1)] + [(a, min(a + 10 * MIB, 40 * MIB) - 1)
                                      for a in range(5 * MIB, 40 * MIB, 10 * MIB)]
        resumed = [r for r in proxy.ranges if r not in fresh]
        assert sorted(r for r in proxy.ranges if r in fresh) == fresh
        # each 10 MiB range is asked for again from past the bytes the cut
        # one delivered (7 MiB less the answer's headers) to its end
        assert len(resumed) == 3, proxy.ranges
        for first, last in resumed:
            a, b = next(f for f in fresh if f[1] == last)
            assert a + 6 * MIB < first < a + 7 * MIB, (first, last)
    finally:
        proxy.close()


@pytest.mark.parametrize("kept_mib, succeeds", [(2, True), (0.5, False)])
def test_only_retries_without_progress_count(moto, bucket, boto, tmp_path, kept_mib, succeeds):
    """Every ranged GET after the first part is cut after KEPT_MIB, with one
    retry allowed. Keeping 2 MiB (a MiB or more) is progress: each 10 MiB
    range arrives in five attempts. Keeping half a MiB is not: the second
    cut ends the download, and the message counts both attempts."""
    src = random_file(tmp_path / "p.bin", 40 * MIB, seed=10)
    boto.upload_file(str(src), bucket, "progress")
    proxy = CutProxy(moto.port)
    try:
        proxy.cut_after(int(kept_mib * MIB), times=None, direction="down", from_byte=1)
        out = tmp_path / "p.out"
        p = s3tool(proxy.endpoint, "download", bucket, "progress", out,
                   options=["--part-size=5MiB", "--concurrency=1", "--max-retries=1",
                            "--retry-base-ms=10", "--quiet"])
        if succeeds:
            ok(p)
            assert sha256(out) == sha256(src)
            assert proxy.cuts >= 3 * 4, proxy.cuts  # three 10 MiB ranges, 4+ cuts each
        else:
            assert p.returncode == 1
            assert "ConnectionError" in p.stderr.decode() and "(after 2 attempts)" in \
                p.stderr.decode(), p.stderr.decode()
            assert proxy.cuts == 2
            assert not out.exists() and not pathlib.Path(str(out) + ".partial").exists()
    finally:
        proxy.close()


def test_cut_parts_fail_cleanly_and_are_aborted(moto, bucket, boto, tmp_path):
    """Every connection that carries more than 1 MiB is cut: each part
    fails after its retries, the upload fails with a clear message, and the
    (small) AbortMultipartUpload gets through: nothing is left."""
    proxy = CutProxy(moto.port)
    try:
        proxy.cut_after(1 * MIB, times=None, direction="up")
        src = random_file(tmp_path / "c.bin", 16 * MIB, seed=5)
        p = s3tool(proxy.endpoint, "upload", bucket, "cut", src,
                   options=["--part-size=5MiB", "--max-retries=2", "--retry-base-ms=10",
                            "--quiet"])
        assert p.returncode == 1
        err = p.stderr.decode()
        assert "upload failed: S3 ConnectionError" in err, err
        assert f"; bucket {bucket}, key cut" in err
        assert proxy.cuts >= 3
        assert boto.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
        assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        # a download cut every time leaves neither the file nor PATH.partial
        boto.put_object(Bucket=bucket, Key="d", Body=os.urandom(3 * MIB))
        proxy.cut_after(1 * MIB, times=None, direction="down")
        out = tmp_path / "d.out"
        p = s3tool(proxy.endpoint, "download", bucket, "d", out,
                   options=["--max-retries=1", "--retry-base-ms=10", "--quiet"])
        assert p.returncode == 1
        assert "download failed: S3 ConnectionError" in p.stderr.decode()
        assert not out.exists() and not pathlib.Path(str(out) + ".partial").exists()
    finally:
        proxy.close()


def socket_buffers(pid):
    """(receive, send) buffer sizes of PID's established TCP sockets, as
    `ss` shows them (skmem's rb and tb)."""
    out = subprocess.run(["ss", "-tnmpH", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    # one socket per "users:" line, its skmem on the same or the next line
    found = re.findall(r"pid=(\d+),[^\n]*\n?\s*skmem:\(r\d+,rb(\d+),t\d+,tb(\d+)", out)
    return [(int(rb), int(tb)) for owner, rb, tb in found if int(owner) == pid]


def kernel_limit(name):
    return int(pathlib.Path(f"/proc/sys/net/core/{name}").read_text())


def test_connections_to_this_host_get_large_socket_buffers(tmp_path):
    """To a server on this host, s3tool's sockets ask for 4 MiB receive and
    send buffers (the kernel doubles what it is asked, up to rmem_max and
    wmem_max). Autotuning would leave them at 128 KiB and tcp_wmem's
    maximum, which costs CPU here (see on_open_socket). This server accepts
    and never reads, so the upload stays connected until it is killed."""
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    src = random_file(tmp_path / "b.bin", 16 * MIB, seed=9)
    proc = subprocess.Popen(
        [str(S3TOOL), "--max-retries=0", f"http://127.0.0.1:{listener.getsockname()[1]}",
         "test", "test", "put", "bkt", "b", str(src)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn, _ = listener.accept()
        with conn:
            wait_until(lambda: socket_buffers(proc.pid), 10, "s3tool's connection")
            want = (2 * min(4 * MIB, kernel_limit("rmem_max")),
                    2 * min(4 * MIB, kernel_limit("wmem_max")))
            assert socket_buffers(proc.pid) == [want]
    finally:
        proc.kill()
        proc.wait()
        listener.close()


def test_server_killed_mid_multipart_upload(tmp_path):
    """moto is killed by its PID while parts are in flight: the upload fails
    with a connection error after its retries; after a restart no object
    and no multipart upload is visible."""
    server = MotoServer(tmp_path / "moto").start()
    proxy = CutProxy(server.port)
    proc = None
    try:
        ok(s3tool(server.endpoint, "mb", "killed"))
        src = random_file(tmp_path / "k.bin", 40 * MIB, seed=6)
        proxy.throttle(8 * MIB)  # about 5 s for the whole file: time to act
        proc = subprocess.Popen(
            [str(S3TOOL), "--part-size=5MiB", "--concurrency=2", "--max-retries=2",
             "--retry-base-ms=50", proxy.endpoint, "test", "test", "upload", "killed", "obj",
             str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        watchdog = threading.Timer(120, proc.kill)
        watchdog.start()
        lines = []
        for raw in proc.stderr:
            line = raw.decode()
            lines.append(line)
            m = re.search(r"upload: ([\d.]+) (\w+) / ", line)
            if m and float(m.group(1)) > 0 and m.group(2) in ("MiB", "KiB"):
                break
        server.kill()  # mid-transfer, by PID
        rest = proc.stderr.read().decode()
        proc.wait()
        watchdog.cancel()
        assert proc.returncode == 1, "".join(lines) + rest
        assert "upload failed: S3 ConnectionError" in rest, rest
        assert "key obj" in rest
        server.start()
        boto = server.client()
        # moto keeps its state in memory: the bucket itself went with it
        names = [b["Name"] for b in boto.list_buckets().get("Buckets", [])]
        assert "killed" not in names
        ok(s3tool(server.endpoint, "mb", "killed"))
        assert boto.list_objects_v2(Bucket="killed").get("KeyCount") == 0
        assert boto.list_multipart_uploads(Bucket="killed").get("Uploads", []) == []
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.close()
        server.stop()


def test_progress_lines(moto, bucket, tmp_path):
    proxy = CutProxy(moto.port)
    try:
        # a few seconds: a rate is shown once a second of samples backs it
        proxy.throttle(4 * MIB)
        src = random_file(tmp_path / "p.bin", 12 * MIB, seed=7)
        start = time.monotonic()
        p = ok(s3tool(proxy.endpoint, "upload", bucket, "p", src,
                      options=["--part-size=5MiB", "--concurrency=1"]))
        elapsed = time.monotonic() - start
        lines = [line for line in p.stderr.decode().splitlines() if "upload:" in line]
        assert lines, p.stderr
        assert re.search(r"upload: [\d.]+ \w+ / 12.0 MiB \(\d+%\), [01]/1 objects, [\d.]+ \w+/s, "
                         r"ETA \d+s", lines[-1]), lines[-1]
        # at most one line every 250 ms
        assert len(lines) <= elapsed / 0.25 + 1
    finally:
        proxy.close()


@pytest.mark.parametrize("endpoint, problem", [
    ("localhost:9000", "must start with http:// or https://"),
    ("ftp://host", "must start with http:// or https://"),
    ("https://", "names no host"),
    ("http://user@host", "must name a host only (no user, query or fragment)"),
])
def test_an_endpoint_that_is_no_url_is_named(endpoint, problem):
    p = s3tool(endpoint, "list", "bucket")
    assert p.returncode == 2
    assert f"s3tool: the endpoint {problem}" in p.stderr.decode()


@pytest.mark.parametrize("option, message", [
    ("--concurrency=abc", "--concurrency must be a whole number from 1 to 256, not 'abc'"),
    ("--concurrency=0", "--concurrency must be a whole number from 1 to 256, not '0'"),
    ("--concurrency=300", "--concurrency must be a whole number from 1 to 256, not '300'"),
    ("--max-retries=-1", "--max-retries must be a whole number from 0 to 100, not '-1'"),
    ("--retry-base-ms=1.5", "--retry-base-ms must be a whole number from 1 to 60000, not '1.5'"),
    ("--part-size=4MiB", "--part-size must be a size from 5MiB to 5GiB (bytes, or with K, M or "
                         "G), not '4MiB'"),
    ("--part-size=8Mb", "--part-size must be a size from 5MiB to 5GiB (bytes, or with K, M or "
                        "G), not '8Mb'"),
    ("--part-size=nan", "--part-size must be a size from 5MiB to 5GiB (bytes, or with K, M or "
                        "G), not 'nan'"),
    ("--checksum=md5", "--checksum must be crc32c or sha256, not 'md5'"),
    ("--region=", "unknown option --region="),
    ("--verbose", "unknown option --verbose"),
])
def test_s3tool_bad_options_are_named(option, message):
    p = s3tool("http://127.0.0.1:1", "list", "bucket", options=[option])
    assert p.returncode == 2
    assert p.stderr.decode().startswith(f"s3tool: {message}\nusage: s3tool "), p.stderr


def test_s3tool_help_goes_to_stdout():
    p = subprocess.run([str(BUILD / "s3tool"), "--help"], capture_output=True, timeout=30)
    assert p.returncode == 0 and p.stderr == b""
    assert p.stdout.startswith(b"usage: s3tool ") and b"download-prefix" in p.stdout


@pytest.mark.parametrize("bucket, virtual, rule", [
    ("b", False, "3 to 255 letters, digits, '.', '-' and '_', first and last not '.' or '-'"),
    ("My_Bucket", True, "3 to 63 lowercase letters, digits, '.' and '-', first and last a "
                        "letter or digit"),
])
def test_s3tool_names_a_bad_bucket_name(bucket, virtual, rule):
    p = s3tool("http://127.0.0.1:1", "mb", bucket, options=["--virtual-host"] if virtual else [])
    assert p.returncode == 2
    assert p.stderr.decode() == f"s3tool: mb: the bucket name '{bucket}' is not one: {rule}\n"


@pytest.mark.parametrize("answer", ["shifted", "whole"])
def test_a_range_answered_with_other_bytes_is_refused(tmp_path, answer):
    """A server that answers each range after the first with other bytes:
    the bytes one further on (and says so in Content-Range), or the whole
    object with a 200. The download fails, naming what it asked for,
    instead of writing those bytes where the asked ones go."""
    data = os.urandom(20 * MIB)

    class Liar(FakeS3):
        def answer(self, method, path, headers, body):
            first, last = map(int, headers["Range"].split("=")[1].split("-"))
            if first > 0 and answer == "whole":
                return 200, {"ETag": '"x"'}, data
            if first > 0:
                first, last = first + 1, min(last + 1, len(data) - 1)
            return 206, {"ETag": '"x"', "Content-Range": f"bytes {first}-{last}/{len(data)}"}, \
                data[first:last + 1]

    fake = Liar()
    try:
        out = tmp_path / "lied.out"
        p = s3tool(fake.endpoint, "download", "bucket", "obj", out,
                   options=["--part-size=5MiB", "--max-retries=1", "--retry-base-ms=10",
                            "--quiet"])
        err = p.stderr.decode()
        assert p.returncode == 1, err
        if answer == "shifted":
            m = re.search(r'InvalidResponse \(HTTP 206\): the server answered Content-Range '
                          r'"bytes (\d+)-(\d+)/(\d+)" to a GET of bytes=(\d+)-(\d+)', err)
            assert m, err
            got_first, got_last, total, first, last = map(int, m.groups())
            assert (got_first, total) == (first + 1, 20 * MIB) and first % (5 * MIB) == 0, err
        else:
            assert re.search(r"InvalidResponse \(HTTP 200\): the server answered HTTP 200 to a "
                             r"ranged GET \(bytes=\d+-\d+\), not 206", err), err
        assert not out.exists() and not pathlib.Path(str(out) + ".partial").exists()
    finally:
        fake.close()


def test_abort_uploads_aborts_the_incomplete_uploads_under_a_prefix(moto, bucket, boto):
    """What a crashed upload leaves (parts stored, invisible, billed) goes;
    uploads beside the prefix and finished objects stay."""
    def incomplete(key):
        upload_id = boto.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        boto.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x")
        return upload_id
    stale = {incomplete("t-1/model/a b+c.bin"): "t-1/model/a b+c.bin",
             incomplete("t-1/caf\u00e9.bin"): "t-1/caf\u00e9.bin"}
    beside = incomplete("t-10/model.bin")
    boto.put_object(Bucket=bucket, Key="t-1/done.txt", Body=b"kept")
    out = ok(s3tool(moto.endpoint, "abort-uploads", bucket, "t-1/")).stdout.decode()
    assert dict(line.split("\t") for line in out.splitlines()) == stale
    left = boto.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in left] == [("t-10/model.bin", beside)]
    assert boto.get_object(Bucket=bucket, Key="t-1/done.txt")["Body"].read() == b"kept"
    # nothing left: nothing said, and still a success
    assert ok(s3tool(moto.endpoint, "abort-uploads", bucket, "t-1/")).stdout == b""
    # a bucket that does not exist is named; no bucket at all is a usage error
    p = s3tool(moto.endpoint, "abort-uploads", "no-such-bucket-here", "t-1/")
    assert p.returncode == 1 and ("abort-uploads failed: S3 NoSuchBucket (HTTP 404): The specified "
                                  "bucket does not exist; bucket no-such-bucket-here"
                                  in p.stderr.decode()), p.stderr
    p = s3tool(moto.endpoint, "abort-uploads")
    assert p.returncode == 2 and p.stderr.decode().startswith("usage: s3tool"), p.stderr


def uploads_page(uploads, next_key=None, next_id=None):
    """A ListMultipartUploads page; truncated when NEXT_KEY is given."""
    body = "".join(f"<Upload><Key>{k}</Key><UploadId>{u}</UploadId></Upload>" for k, u in uploads)
    more = (f"<IsTruncated>true</IsTruncated><NextKeyMarker>{next_key}</NextKeyMarker>"
            f"<NextUploadIdMarker>{next_id}</NextUploadIdMarker>" if next_key
            else "<IsTruncated>false</IsTruncated>")
    return f"<ListMultipartUploadsResult>{more}{body}</ListMultipartUploadsResult>"


def test_abort_uploads_follows_the_listing_pages():
    """A truncated listing goes on from its NextKeyMarker and
    NextUploadIdMarker; every upload of every page is aborted, and one that
    is already gone (404) is no failure."""
    fake = FakeS3({("DELETE", "uploadId"): [(404, "NoSuchUpload")]})
    fake.upload_pages = [uploads_page([("p/a", "id-1"), ("p/b c", "id+2")], "p/b c", "id+2"),
                         uploads_page([("p/d", "id-3")])]
    try:
        out = ok(s3tool(fake.endpoint, "abort-uploads", "bucket", "p/")).stdout.decode()
        assert sorted(out.splitlines()) == ["id+2\tp/b c", "id-1\tp/a", "id-3\tp/d"]
        lists = [path for method, path, _, _ in fake.requests if method == "GET"]
        assert lists == ["/bucket?max-uploads=1000&prefix=p%2F&uploads=",
                         "/bucket?key-marker=p%2Fb%20c&max-uploads=1000&prefix=p%2F&"
                         "upload-id-marker=id%2B2&uploads="], lists
        deletes = sorted(path for method, path, _, _ in fake.requests if method == "DELETE")
        assert deletes == ["/bucket/p/a?uploadId=id-1", "/bucket/p/b%20c?uploadId=id%2B2",
                           "/bucket/p/d?uploadId=id-3"], deletes
    finally:
        fake.close()


def test_abort_uploads_stops_on_a_listing_that_does_not_move_on():
    fake = FakeS3()
    fake.upload_pages = [uploads_page([("p/a", "id-1")], "p/a", "id-1")] * 3
    try:
        p = s3tool(fake.endpoint, "abort-uploads", "bucket", "p/")
        assert p.returncode == 1
        assert ("abort-uploads failed: S3 InvalidResponse: the listing of incomplete uploads in "
                "bucket bucket does not move past key \"p/a\"") in p.stderr.decode(), p.stderr
        assert not [r for r in fake.requests if r[0] == "DELETE"]
    finally:
        fake.close()


def test_retries_on_throttling_and_5xx():
    fake = FakeS3({("PUT", ""): [(503, "SlowDown"), (500, "InternalError")],
                   ("GET", ""): [(429, "TooManyRequests")]})
    try:
        ok(s3tool(fake.endpoint, "put", "bucket", "k", "-", input=b"payload",
                  options=["--retry-base-ms=5"]))
        puts = [r for r in fake.requests if r[0] == "PUT"]
        assert len(puts) == 3
        for _, path, headers, body in puts:
            assert path == "/bucket/k" and body == b"payload"
            assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
            assert headers["x-amz-checksum-crc32c"] == crc32c_b64(b"payload")
            assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=test/")
        assert ok(s3tool(fake.endpoint, "get", "bucket", "k",
                         options=["--retry-base-ms=5"])).stdout == b"fake body"
    finally:
        fake.close()


def test_retries_give_up_with_s3s_code():
    fake = FakeS3({("PUT", ""): [(503, "SlowDown")] * 10, ("GET", ""): [(403, "AccessDenied")]})
    try:
        p = s3tool(fake.endpoint, "put", "bucket", "k", "-", input=b"x",
                   options=["--max-retries=2", "--retry-base-ms=5"])
        assert p.returncode == 1
        assert ("put failed: S3 SlowDown (HTTP 503): scripted SlowDown (after 3 attempts)"
                "; bucket bucket, key k") in p.stderr.decode()
        assert len([r for r in fake.requests if r[0] == "PUT"]) == 3
        p = s3tool(fake.endpoint, "get", "bucket", "k", options=["--retry-base-ms=5"])
        assert p.returncode == 1 and "AccessDenied (HTTP 403)" in p.stderr.decode()
        assert len([r for r in fake.requests if r[0] == "GET"]) == 1  # 4xx: no retry
    finally:
        fake.close()


def test_multipart_part_hashes_and_complete_error_body(tmp_path):
    """--checksum=sha256: each part carries the SHA-256 of its own bytes; a
    200 whose body is an <Error> is a failure (retried when the code says
    so)."""
    fake = FakeS3({("POST", "uploadId"): [(200, "InternalError")],
                   ("PUT", "partNumber"): [(500, "InternalError")]})
    try:
        src = random_file(tmp_path / "f.bin", 12 * MIB + 5, seed=9)
        ok(s3tool(fake.endpoint, "upload", "bucket", "a b+", src,
                  options=["--part-size=5MiB", "--retry-base-ms=5", "--checksum=sha256"]))
        data = src.read_bytes()
        parts = {}
        for method, path, headers, body in fake.requests:
            if method == "PUT":
                assert path.startswith("/bucket/a%20b%2B?partNumber=")
                assert path.endswith("&uploadId=fake-id")
                assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
                parts[int(path.split("partNumber=")[1].split("&")[0])] = body
        assert sorted(parts) == [1, 2, 3]
        assert b"".join(parts[i] for i in (1, 2, 3)) == data
        completes = [r for r in fake.requests if r[0] == "POST" and "uploadId=" in r[1]]
        assert len(completes) == 2
        assert b"<PartNumber>3</PartNumber>" in completes[-1][3]
        assert not [r for r in fake.requests if r[0] == "DELETE"]
    finally:
        fake.close()


def test_crc32c_trailer_per_part_and_in_the_complete_list(tmp_path):
    """CRC32C (the default): each part is sent once, aws-chunked, with the
    CRC-32C of exactly its bytes in the trailer (a retried part too);
    CreateMultipartUpload names the algorithm and CompleteMultipartUpload
    lists every part's checksum, so that S3 checks them."""
    fake = FakeS3({("PUT", "partNumber"): [(500, "InternalError")]})
    try:
        src = random_file(tmp_path / "f.bin", 12 * MIB + 5, seed=12)
        ok(s3tool(fake.endpoint, "upload", "bucket", "k", src,
                  options=["--part-size=5MiB", "--retry-base-ms=5"]))
        data = src.read_bytes()
        creates = [r for r in fake.requests if r[0] == "POST" and r[1].endswith("?uploads=")]
        assert len(creates) == 1 and creates[0][2]["x-amz-checksum-algorithm"] == "CRC32C"
        parts, sent = {}, 0
        for method, path, headers, body in fake.requests:
            if method != "PUT":
                continue
            sent += 1
            assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
            assert headers["Content-Encoding"] == "aws-chunked"
            assert headers["x-amz-trailer"] == "x-amz-checksum-crc32c"
            assert headers["x-amz-sdk-checksum-algorithm"] == "CRC32C"
            assert "x-amz-checksum-crc32c" not in headers  # it follows the body
            signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
            assert "x-amz-trailer" in signed.split(";")
            part, trailers, sizes = decode_aws_chunked(body)
            assert int(headers["x-amz-decoded-content-length"]) == len(part)
            assert trailers == {"x-amz-checksum-crc32c": crc32c_b64(part)}
            assert all(n == MIB for n in sizes[:-1]) and 0 < sizes[-1] <= MIB
            parts[int(path.split("partNumber=")[1].split("&")[0])] = part
        assert sent == 4  # three parts, one of them twice
        assert b"".join(parts[i] for i in (1, 2, 3)) == data
        complete = [r for r in fake.requests if r[0] == "POST" and "uploadId=" in r[1]][-1][3]
        for i in (1, 2, 3):
            assert (f"<PartNumber>{i}</PartNumber><ETag>" in complete.decode() and
                    f"<ChecksumCRC32C>{crc32c_b64(parts[i])}</ChecksumCRC32C>"
                    in complete.decode()), complete
    finally:
        fake.close()


def test_crc32c_single_put_and_put_from_memory(tmp_path):
    """The default, over http too: a small file is one aws-chunked PUT; a
    PUT from memory carries the checksum as a header (UNSIGNED-PAYLOAD); an
    empty file has a trailer too. --checksum=sha256 signs the body's
    SHA-256 instead."""
    fake = FakeS3()
    try:
        src = tmp_path / "small"
        src.write_bytes(os.urandom(1234567))
        ok(s3tool(fake.endpoint, "upload", "bucket", "small", src))
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        ok(s3tool(fake.endpoint, "upload", "bucket", "empty", empty))
        ok(s3tool(fake.endpoint, "put", "bucket", "mem", "-", input=b"in memory"))
        ok(s3tool(fake.endpoint, "upload", "bucket", "explicit", src,
                  options=["--checksum=crc32c"]))
        puts = {path: (headers, body) for method, path, headers, body in fake.requests
                if method == "PUT"}
        for key, want in (("small", src.read_bytes()), ("empty", b""),
                          ("explicit", src.read_bytes())):
            headers, body = puts[f"/bucket/{key}"]
            assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
            data, trailers, _ = decode_aws_chunked(body)
            assert data == want
            assert trailers["x-amz-checksum-crc32c"] == crc32c_b64(want)
        headers, body = puts["/bucket/mem"]
        assert body == b"in memory"
        assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert headers["x-amz-checksum-crc32c"] == crc32c_b64(b"in memory")
        # the opt-in: the body's SHA-256, signed, and no CRC32C
        ok(s3tool(fake.endpoint, "upload", "bucket", "sha", src, options=["--checksum=sha256"]))
        headers, body = [(h, b) for m, p, h, b in fake.requests if p == "/bucket/sha"][0]
        assert body == src.read_bytes()
        assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
        assert not [h for h in headers if h.lower().startswith("x-amz-checksum")]
        signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
        assert "x-amz-content-sha256" in signed.split(";")
    finally:
        fake.close()


def test_download_checks_the_stored_crc32c(tmp_path):
    """A GET asks for the object's stored checksum (x-amz-checksum-mode)
    and checks the CRC32C of an answer that holds a whole single-part
    object: a mismatch is retried, then fails with ChecksumMismatch. The
    sum of a multipart object (ETag or sum "-N", type COMPOSITE) is no sum
    of its bytes and is not checked."""
    fake = FakeS3()
    out = tmp_path / "out"
    try:
        right, wrong = crc32c_b64(b"fake body"), crc32c_b64(b"another body")
        fake.get_headers = {"x-amz-checksum-crc32c": right, "x-amz-checksum-type": "FULL_OBJECT"}
        assert ok(s3tool(fake.endpoint, "get", "bucket", "k")).stdout == b"fake body"
        ok(s3tool(fake.endpoint, "download", "bucket", "k", out))
        assert out.read_bytes() == b"fake body"
        gets = [h for m, p, h, b in fake.requests if m == "GET"]
        assert len(gets) == 2 and all(h["x-amz-checksum-mode"] == "ENABLED" for h in gets)
        signed = gets[0]["Authorization"].split("SignedHeaders=")[1].split(",")[0]
        assert "x-amz-checksum-mode" in signed.split(";")

        fake.get_headers = {"x-amz-checksum-crc32c": wrong}
        fake.requests.clear()
        for cmd in (["get", "bucket", "k"], ["download", "bucket", "k", out]):
            p = s3tool(fake.endpoint, *cmd, options=["--max-retries=1", "--retry-base-ms=5"])
            assert p.returncode == 1
            assert (f"ChecksumMismatch (HTTP 200): the body received has CRC32C {right}, the "
                    f"object's stored checksum is {wrong} (after 2 attempts)") in p.stderr.decode()
        assert len([r for r in fake.requests if r[0] == "GET"]) == 4
        assert not pathlib.Path(f"{out}.partial").exists()

        for headers in ({"x-amz-checksum-crc32c": wrong, "ETag": '"abc-2"'},
                        {"x-amz-checksum-crc32c": wrong, "x-amz-checksum-type": "COMPOSITE"},
                        {"x-amz-checksum-crc32c": f"{wrong}-2"}):
            fake.get_headers = headers
            assert ok(s3tool(fake.endpoint, "get", "bucket", "k")).stdout == b"fake body"
    finally:
        fake.close()


def test_crc32c_kept_by_the_server_and_checked_on_download(moto, bucket, boto, tmp_path):
    """The default upload's CRC32C is what the server keeps with the object
    (moto keeps it because the request names the algorithm, as the SDKs
    do), and a download of the single-part object checks it."""
    src = random_file(tmp_path / "one.bin", 3 * MIB + 1, seed=13)
    ok(s3tool(moto.endpoint, "upload", bucket, "one", src))
    got = boto.get_object(Bucket=bucket, Key="one", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32C"] == crc32c_b64(src.read_bytes())
    out = tmp_path / "one.out"
    ok(s3tool(moto.endpoint, "download", bucket, "one", out))
    assert sha256(out) == sha256(src)


def test_upload_dir_stops_at_the_first_failure(tmp_path):
    """A directory upload opens its files ahead, in batches; when one PUT
    fails for good, the files not yet sent are closed unsent and the error
    names the key."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(100):
        (tree / f"f{i:03d}").write_bytes(b"x" * (i + 1))
    fake = FakeS3({("PUT", ""): [(403, "AccessDenied")]})
    try:
        p = s3tool(fake.endpoint, "upload-dir", "bucket", "p", tree,
                   options=["--quiet", "--concurrency=1"])
        assert p.returncode == 1
        assert "upload-dir failed: S3 AccessDenied (HTTP 403)" in p.stderr.decode()
        assert "; bucket bucket, key p/f000" in p.stderr.decode()
        assert len([r for r in fake.requests if r[0] == "PUT"]) == 1
    finally:
        fake.close()


def test_failed_multipart_is_aborted():
    fake = FakeS3({("PUT", "partNumber"): [(400, "InvalidPart")] * 10})
    try:
        import tempfile
        with tempfile.NamedTemporaryFile() as f:
            f.write(os.urandom(6 * MIB))
            f.flush()
            p = s3tool(fake.endpoint, "upload", "bucket", "k", f.name,
                       options=["--part-size=5MiB", "--quiet"])
        assert p.returncode == 1 and "InvalidPart (HTTP 400)" in p.stderr.decode()
        deletes = [r for r in fake.requests if r[0] == "DELETE"]
        assert len(deletes) == 1 and deletes[0][1] == "/bucket/k?uploadId=fake-id"
    finally:
        fake.close()


def test_wait_until_times_out():
    with pytest.raises(TimeoutError):
        wait_until(lambda: False, 0.05, "nothing")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FFDL_SLOW_TESTS") != "1",
                    reason="1 GiB round trip: set FFDL_SLOW_TESTS=1 to run it")
def test_one_gib_round_trip(moto, bucket, boto, tmp_path):
    src = random_file(tmp_path / "g.bin", 1024 * MIB, seed=8)
    ok(s3tool(moto.endpoint, "upload", bucket, "gib", src, timeout=900))
    assert boto.head_object(Bucket=bucket, Key="gib")["ContentLength"] == 1024 * MIB
    out = tmp_path / "g.out"
    # two requests at a time would make 128 MiB ranges: they stop at 64 MiB
    proxy = CutProxy(moto.port)
    try:
        ok(s3tool(proxy.endpoint, "download", bucket, "gib", out, options=["--concurrency=2"],
                  timeout=900))
        assert sorted(proxy.ranges) == [(0, 8 * MIB - 1)] + [
            (a, min(a + 64 * MIB, 1024 * MIB) - 1) for a in range(8 * MIB, 1024 * MIB, 64 * MIB)]
    finally:
        proxy.close()
    assert sha256(out) == sha256(src)
