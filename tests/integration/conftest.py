"""Shared fixtures: the real binaries of the build under test, and an S3
server."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = (ROOT / os.environ.get("FFDL_BUILD", "build")).resolve()


def run_ffdl(*args, cwd=ROOT, env=None, timeout=60, binary="ffdl"):
    """Runs a binary of the build and returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([str(BUILD / binary), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def diagnostics(stderr, name):
    """The FILE:LINE:COL lines for NAME, without log lines and tracebacks."""
    return [line for line in stderr.splitlines() if line.startswith(f"{name}:")]


@pytest.fixture
def ffdl():
    return run_ffdl


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A moto S3 server on loopback, one for each test module that asks."""
    from s3server import MotoServer
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def policies_copy(tmp_path):
    """A private copy of policies/ that a test may edit."""
    import shutil
    target = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", target)
    return target
