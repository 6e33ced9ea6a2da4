"""`envelope plugin --backend aws` end to end: the real plugin binary, driven by grpcio like
kube-apiserver, against a real `envelope kms serve` (SigV4, real HTTP) managed with boto3, and
against moto_server as a second, independent AWS KMS implementation."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

from test_kms_audit import AKID, SECRET, _binary, _client, _free_port, _start, _stop


def _plugin(tmp, endpoint, key, extra=(), env_extra=None, http="off"):
    sock = os.path.join(tmp, "kms.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    env.update(env_extra or {})
    log = open(os.path.join(tmp, "plugin.log"), "w")
    p = subprocess.Popen([_binary(), "plugin", "--backend", "aws", "--endpoint", endpoint, "--region", "us-east-1",
                          "--key", key, "--socket", sock, "--http-addr", http, "--health-interval", "200ms",
                          "--data-dir", os.path.join(tmp, "unused"), *extra],
                         stdout=subprocess.DEVNULL, stderr=log, env=env)
    end = time.time() + 30
    while not os.path.exists(sock):
        assert p.poll() is None, open(os.path.join(tmp, "plugin.log")).read()
        assert time.time() < end
        time.sleep(0.05)
    return p, sock


def _wait(pred, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_aws_backend_against_envelope_kms_serve(stubs, tmp_path):
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    srv_dir = tmp_path / "kms"
    srv_dir.mkdir(mode=0o700)
    server, port, _ = _start(str(srv_dir), [])
    try:
        kms = _client(port)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/k8s", TargetKeyId=key_id)
        plugin, sock = _plugin(str(tmp_path), f"http://127.0.0.1:{port}", "alias/k8s",
                               extra=["--encryption-context", "cluster=prod"])
        try:
            with grpc.insecure_channel(f"unix://{sock}", options=[("grpc.default_authority", sock)]) as ch:
                c = v2g.KeyManagementServiceStub(ch)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                st = c.Status(v2.StatusRequest(), timeout=3)
                seed = os.urandom(32)
                e = c.Encrypt(v2.EncryptRequest(plaintext=seed, uid="u1"), timeout=3)
                assert e.key_id == st.key_id and len(e.ciphertext) <= 1024
                d = c.Decrypt(v2.DecryptRequest(ciphertext=e.ciphertext, uid="u2", key_id=e.key_id,
                                                annotations=dict(e.annotations)), timeout=3)
                assert d.plaintext == seed
                # Rotation in the KMS → new key_id within one health interval; old data decrypts.
                kms.rotate_key_on_demand(KeyId=key_id)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).key_id != st.key_id)
                d = c.Decrypt(v2.DecryptRequest(ciphertext=e.ciphertext, uid="u3", key_id=e.key_id,
                                                annotations=dict(e.annotations)), timeout=3)
                assert d.plaintext == seed
                # Disable → unhealthy, FAILED_PRECONDITION; the key_id is kept. Enable → healthy.
                kms.disable_key(KeyId=key_id)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz != "ok")
                assert "disabled" in c.Status(v2.StatusRequest(), timeout=3).healthz
                with pytest.raises(grpc.RpcError) as err:
                    c.Encrypt(v2.EncryptRequest(plaintext=seed, uid="u4"), timeout=3)
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                kms.enable_key(KeyId=key_id)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                # The encryption context was really sent: the server's audit log shows it.
                audit = (srv_dir / "data" / "audit.log").read_text()
                assert '"cluster":"prod"' in audit.replace(" ", "")
        finally:
            _stop(plugin)
        # Server down → UNAVAILABLE, and Status keeps the last key_id.
        (tmp_path / "p2").mkdir()
        plugin, sock = _plugin(str(tmp_path / "p2"), f"http://127.0.0.1:{port}", "alias/k8s")
        try:
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                c = v2g.KeyManagementServiceStub(ch)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                last = c.Status(v2.StatusRequest(), timeout=3).key_id
                _stop(server)
                server = None
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz != "ok")
                assert c.Status(v2.StatusRequest(), timeout=3).key_id == last
                with pytest.raises(grpc.RpcError) as err:
                    c.Encrypt(v2.EncryptRequest(plaintext=b"x" * 32, uid="u5"), timeout=3)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            _stop(plugin)
    finally:
        if server is not None:
            _stop(server)


def test_aws_backend_against_moto(stubs, tmp_path):
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    moto = pathlib.Path(sys.executable).parent / "moto_server"
    assert moto.exists(), "moto[server] is installed by scripts/test"
    port = _free_port()
    m = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < end and m.poll() is None
                time.sleep(0.1)
        kms = _client(port)
        key_arn = kms.create_key()["KeyMetadata"]["Arn"]
        hport = _free_port()
        plugin, sock = _plugin(str(tmp_path), f"http://127.0.0.1:{port}", key_arn, http=f"127.0.0.1:{hport}")
        try:
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                c = v2g.KeyManagementServiceStub(ch)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok"), \
                    open(os.path.join(tmp_path, "plugin.log")).read()
                seed = os.urandom(32)
                e = c.Encrypt(v2.EncryptRequest(plaintext=seed, uid="m1"), timeout=3)
                d = c.Decrypt(v2.DecryptRequest(ciphertext=e.ciphertext, uid="m2", key_id=e.key_id,
                                                annotations=dict(e.annotations)), timeout=3)
                assert d.plaintext == seed
            import urllib.request
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{hport}/metrics", timeout=5).read().decode()
            assert 'envelope_plugin_remote_calls_total{operation="Encrypt",outcome="ok"} 1' in metrics, metrics
            assert 'envelope_plugin_remote_calls_total{operation="DescribeKey",outcome="ok"}' in metrics
            assert "envelope_plugin_remote_call_duration_seconds_bucket" in metrics
        finally:
            _stop(plugin)
    finally:
        m.send_signal(signal.SIGTERM)
        m.wait(timeout=20)
