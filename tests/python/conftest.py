"""Fixtures: Python stubs generated from the project's .proto files, a running plugin, and a
cluster (etcd + kube-apiserver, kube.py) for the real-cluster tests."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from harness import ROOT, envelope_bin, free_port
from kube import ApiServer, Etcd

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


@pytest.fixture(scope="module")
def plugin():
    """A real `envelope plugin` on a socket in a temp dir; yields the socket path."""
    d = tempfile.mkdtemp(prefix="envelope-py-")
    sock = os.path.join(d, "kms.sock")
    port = free_port()
    log = open(os.path.join(d, "stderr.log"), "w")
    p = subprocess.Popen(
        [envelope_bin(), "plugin", "--socket", sock, "--data-dir", os.path.join(d, "data"),
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


@pytest.fixture
def cluster(tmp_path):
    """etcd running, kube-apiserver created but not started (tests start it with a config), and a
    list the test appends its kube.Plugin processes to; all of them stopped afterwards (a plugin
    still running must exit 0 on SIGTERM)."""
    etcd = Etcd(str(tmp_path))
    api = ApiServer(str(tmp_path), etcd)
    plugins = []
    yield etcd, api, plugins
    for p in plugins:
        if p.proc.poll() is None:
            p.stop()
    if api.proc is not None and api.proc.poll() is None:
        api.stop()
    etcd.stop()


SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def pkcs11_envelope(t, *args):
    """`envelope ARGS --backend pkcs11 …` against the `token` fixture's token."""
    return subprocess.run([envelope_bin(), *args, *t["args"]], env=t["env"], capture_output=True, text=True, timeout=60)


@pytest.fixture
def token(tmp_path):
    """A SoftHSM2 token of this test's own (its own configuration and token directory), a user
    PIN file (0600) and an AES-256 key `k8s` generated inside the token."""
    assert os.path.exists(SOFTHSM_MODULE), "scripts/test installs softhsm2"
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    util = shutil.which("softhsm2-util") or "/usr/bin/softhsm2-util"
    subprocess.run([util, "--init-token", "--free", "--label", "kms", "--so-pin", "12345678", "--pin", "5678"],
                   env=env, check=True, capture_output=True)
    pin = tmp_path / "pin"
    pin.write_text("5678\n")
    pin.chmod(0o600)
    t = {"dir": tmp_path, "env": env, "pin": pin,
         "args": ["--backend", "pkcs11", "--module", SOFTHSM_MODULE, "--token-label", "kms",
                  "--pin-file", str(pin)]}
    r = pkcs11_envelope(t, "key", "create", "k8s")
    assert r.returncode == 0, r.stderr
    return t


