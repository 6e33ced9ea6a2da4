"""Fixtures: Python stubs generated from the project's .proto files, and a running plugin."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "crates" / "proto" / "proto"


@pytest.fixture(scope="session")
def stubs():
    """Generate grpcio stubs from our .proto files with grpcio-tools, into a temp dir."""
    from grpc_tools import protoc

    out = pathlib.Path(tempfile.mkdtemp(prefix="envelope-stubs-"))
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    for name in ["kms_v2.proto", "kms_v1beta1.proto"]:
        rc = protoc.main([
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_DIR / name),
        ])
        assert rc == 0, f"protoc failed for {name}"
    sys.path.insert(0, str(out))
    import kms_v2_pb2, kms_v2_pb2_grpc, kms_v1beta1_pb2, kms_v1beta1_pb2_grpc  # noqa: E401

    yield {
        "v2": kms_v2_pb2,
        "v2_grpc": kms_v2_pb2_grpc,
        "v1": kms_v1beta1_pb2,
        "v1_grpc": kms_v1beta1_pb2_grpc,
    }
    shutil.rmtree(out, ignore_errors=True)


def _binary():
    b = os.environ.get("ENVELOPE_BIN") or str(ROOT / "target" / "debug" / "envelope")
    assert os.path.exists(b), f"build the binary first: {b}"
    return b


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def plugin():
    """A real `envelope plugin` on a socket in a temp dir; yields the socket path."""
    d = tempfile.mkdtemp(prefix="envelope-py-")
    sock = os.path.join(d, "kms.sock")
    port = _free_port()
    log = open(os.path.join(d, "stderr.log"), "w")
    p = subprocess.Popen(
        [_binary(), "plugin", "--socket", sock, "--data-dir", os.path.join(d, "data"),
         "--http-addr", f"127.0.0.1:{port}", "--health-interval", "200ms"],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    deadline = time.time() + 20
    while not os.path.exists(sock):
        assert p.poll() is None, "plugin exited early"
        assert time.time() < deadline, "plugin socket did not appear"
        time.sleep(0.05)
    time.sleep(0.1)
    yield {"socket": sock, "dir": d, "http_port": port}
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0
    log.close()
    shutil.rmtree(d, ignore_errors=True)
