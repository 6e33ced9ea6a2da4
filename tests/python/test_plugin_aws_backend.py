"""`envelope plugin --backend aws` end to end: the real plugin binary, driven by grpcio like
kube-apiserver, against a real `envelope kms serve` (SigV4, real HTTP) managed with boto3, and
against moto_server as a second, independent AWS KMS implementation."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest

from harness import envelope_bin, free_port, wait_listening
from test_kms_audit import AKID, SECRET, _client, _start, _stop


def _plugin(tmp, endpoint, key, extra=(), env_extra=None, http="off"):
    sock = os.path.join(tmp, "kms.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    env.update(env_extra or {})
    log = open(os.path.join(tmp, "plugin.log"), "w")
    p = subprocess.Popen([envelope_bin(), "plugin", "--backend", "aws", "--endpoint", endpoint, "--region", "us-east-1",
                          "--key", key, "--socket", sock, "--http-addr", http, "--health-interval", "200ms",
                          "--data-dir", os.path.join(tmp, "unused"), *extra],
                         stdout=subprocess.DEVNULL, stderr=log, env=env)
    end = time.time() + 30
    while not os.path.exists(sock):
        assert p.poll() is None, open(os.path.join(tmp, "plugin.log")).read()
        assert time.time() < end
        time.sleep(0.05)
    return p, sock


def _key_server(tmp_path):
    """`envelope kms serve` in tmp_path/kms: its directory, process, port and a boto3 client."""
    srv_dir = tmp_path / "kms"
    srv_dir.mkdir(mode=0o700)
    server, port, _ = _start(str(srv_dir), [])
    return srv_dir, server, port, _client(port)


def _http(port, path):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(pred, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_aws_backend_against_envelope_kms_serve(stubs, tmp_path):
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    srv_dir, server, port, kms = _key_server(tmp_path)
    try:
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
        hport = free_port()
        plugin, sock = _plugin(str(tmp_path / "p2"), f"http://127.0.0.1:{port}", "alias/k8s", http=f"127.0.0.1:{hport}")
        try:
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                c = v2g.KeyManagementServiceStub(ch)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                last = c.Status(v2.StatusRequest(), timeout=3).key_id
                _stop(server)
                server = None
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz != "ok")
                assert c.Status(v2.StatusRequest(), timeout=3).key_id == last
                # One line that says what is wrong, never the SDK's Debug dumps.
                healthz = c.Status(v2.StatusRequest(), timeout=3).healthz
                assert "cannot reach the KMS" in healthz and "\n" not in healthz, healthz
                for dump in ("DispatchFailure(", "ConnectorError {", "Some(", "source:"):
                    assert dump not in healthz, healthz
                with pytest.raises(grpc.RpcError) as err:
                    c.Encrypt(v2.EncryptRequest(plaintext=b"x" * 32, uid="u5"), timeout=3)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "DispatchFailure(" not in err.value.details(), err.value.details()
                assert "DispatchFailure(" not in _http(hport, "/readyz")[1]
                # Not ready, but alive: a KMS outage must not get the plugin restarted.
                assert _http(hport, "/readyz")[0] == 503
                assert _http(hport, "/livez") == (200, "ok\n")
                # Server back on the same address → healthy again, same key_id, Encrypt works.
                server, _, _ = _start(str(srv_dir), [], port=port)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                assert c.Status(v2.StatusRequest(), timeout=3).key_id == last
                e = c.Encrypt(v2.EncryptRequest(plaintext=b"y" * 32, uid="u6"), timeout=3)
                assert e.key_id == last
        finally:
            _stop(plugin)
    finally:
        if server is not None:
            _stop(server)


def test_aws_backend_against_moto(stubs, tmp_path):
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    moto = pathlib.Path(sys.executable).parent / "moto_server"
    assert moto.exists(), "moto[server] is installed by scripts/test"
    port = free_port()
    m = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(m, port, timeout=30)
        kms = _client(port)
        key_arn = kms.create_key()["KeyMetadata"]["Arn"]
        hport = free_port()
        # One DescribeKey per probe, so the Encrypt count below is the client's alone.
        plugin, sock = _plugin(str(tmp_path), f"http://127.0.0.1:{port}", key_arn, http=f"127.0.0.1:{hport}",
                               extra=["--health-probe", "describe-key"])
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


def test_aws_backend_two_keys_in_one_process(stubs, tmp_path):
    """Two --key/--socket pairs: each instance has its own key_id and health; one disabled key
    makes only its instance unhealthy, /readyz names it, /livez stays up."""
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    _, server, port, kms = _key_server(tmp_path)
    try:
        ids = {}
        for name in ("a", "b"):
            ids[name] = kms.create_key()["KeyMetadata"]["KeyId"]
            kms.create_alias(AliasName=f"alias/k8s-{name}", TargetKeyId=ids[name])
        sock_b = str(tmp_path / "b.sock")
        hport = free_port()
        plugin, sock_a = _plugin(str(tmp_path), f"http://127.0.0.1:{port}", "alias/k8s-a", http=f"127.0.0.1:{hport}",
                                 extra=["--provider-name", "envelope-a", "--key", "alias/k8s-b", "--socket", sock_b,
                                        "--provider-name", "envelope-b"])

        def http(path):
            return _http(hport, path)

        try:
            assert _wait(lambda: os.path.exists(sock_b))
            with grpc.insecure_channel(f"unix://{sock_a}") as cha, grpc.insecure_channel(f"unix://{sock_b}") as chb:
                a, b = v2g.KeyManagementServiceStub(cha), v2g.KeyManagementServiceStub(chb)
                assert _wait(lambda: a.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                assert _wait(lambda: b.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                ka, kb = a.Status(v2.StatusRequest(), timeout=3).key_id, b.Status(v2.StatusRequest(), timeout=3).key_id
                assert ka != kb
                for c, kid in ((a, ka), (b, kb)):
                    seed = os.urandom(32)
                    e = c.Encrypt(v2.EncryptRequest(plaintext=seed, uid="x"), timeout=3)
                    assert e.key_id == kid
                    d = c.Decrypt(v2.DecryptRequest(ciphertext=e.ciphertext, uid="y", key_id=e.key_id,
                                                    annotations=dict(e.annotations)), timeout=3)
                    assert d.plaintext == seed
                assert http("/readyz") == (200, "ok\n")

                kms.disable_key(KeyId=ids["b"])
                assert _wait(lambda: b.Status(v2.StatusRequest(), timeout=3).healthz != "ok")
                assert "disabled" in b.Status(v2.StatusRequest(), timeout=3).healthz
                assert a.Status(v2.StatusRequest(), timeout=3).healthz == "ok"
                with pytest.raises(grpc.RpcError) as err:
                    b.Encrypt(v2.EncryptRequest(plaintext=b"k" * 32, uid="z"), timeout=3)
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                a.Encrypt(v2.EncryptRequest(plaintext=b"k" * 32, uid="w"), timeout=3)
                code, body = http("/readyz")
                assert code == 503 and f"[-] {sock_b} (alias/k8s-b): " in body and f"[+] {sock_a} (alias/k8s-a) ok" in body, body
                assert http("/livez")[0] == 200
                _, metrics = http("/metrics")
                assert f'envelope_plugin_healthy{{socket="{sock_b}",key="alias/k8s-b"}} 0' in metrics, metrics
                assert f'envelope_plugin_healthy{{socket="{sock_a}",key="alias/k8s-a"}} 1' in metrics, metrics
                assert (f'envelope_plugin_remote_calls_total{{socket="{sock_a}",key="alias/k8s-a",'
                        f'operation="Encrypt",outcome="ok"}}') in metrics, metrics

                kms.enable_key(KeyId=ids["b"])
                assert _wait(lambda: http("/readyz")[0] == 200)
        finally:
            _stop(plugin)
        assert not os.path.exists(sock_a) and not os.path.exists(sock_b)
    finally:
        _stop(server)


def test_retries_end_within_the_callers_deadline(stubs, tmp_path):
    """With the KMS not answering, a Decrypt sent with a 1.5 s gRPC deadline gets the plugin's
    UNAVAILABLE before that deadline, not after the plugin's 2 s default retry budget."""
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    _, server, port, kms = _key_server(tmp_path)
    try:
        key_arn = kms.create_key()["KeyMetadata"]["Arn"]
        (tmp_path / "p1").mkdir()
        plugin, sock = _plugin(str(tmp_path / "p1"), f"http://127.0.0.1:{port}", key_arn)
        try:
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                c = v2g.KeyManagementServiceStub(ch)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                e = c.Encrypt(v2.EncryptRequest(plaintext=os.urandom(32), uid="d1"), timeout=3)
        finally:
            _stop(plugin)
    finally:
        _stop(server)

    # An endpoint that accepts connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    (tmp_path / "p2").mkdir()
    plugin, sock = _plugin(str(tmp_path / "p2"), f"http://127.0.0.1:{silent.getsockname()[1]}", key_arn)
    try:
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            c = v2g.KeyManagementServiceStub(ch)
            req = v2.DecryptRequest(ciphertext=e.ciphertext, uid="d2", key_id=e.key_id, annotations=dict(e.annotations))
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                c.Decrypt(req, timeout=1.5)
            took = time.monotonic() - start
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (err.value.code(), err.value.details())
            details = err.value.details()
            assert "no answer from the KMS within" in details, details
            window_ms = int(details.split("within ")[1].split(" ")[0])
            # The caller's 1.5 s less the 100 ms reserve, not the 2 s used without a deadline.
            assert 800 <= window_ms < 1500, details
            assert took < 1.5, took
    finally:
        _stop(plugin)
        silent.close()


def test_sigterm_during_the_first_probe_stops_cleanly(tmp_path):
    """A KMS that never answers holds the first probe (up to 5 s); SIGTERM meanwhile ends the
    process at once with exit 0 and leaves no socket."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    sock = str(tmp_path / "kms.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    p = subprocess.Popen([envelope_bin(), "plugin", "--backend", "aws", "--endpoint", f"http://127.0.0.1:{silent.getsockname()[1]}",
                          "--region", "us-east-1", "--key", "alias/k", "--socket", sock, "--http-addr", "off",
                          "--data-dir", str(tmp_path / "unused")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        # Wait until the plugin has connected to the silent endpoint (the probe is in flight).
        silent.settimeout(20)
        conn, _ = silent.accept()
        start = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0, p.stderr.read().decode()
        assert time.monotonic() - start < 2, "waited for the probe instead of stopping"
        assert not os.path.exists(sock)
        conn.close()
    finally:
        if p.poll() is None:
            p.kill()
        silent.close()


def test_aws_backend_over_https_with_a_private_ca(stubs, tmp_path):
    """The plugin reaches `envelope kms serve` over HTTPS signed by a private CA when given
    --ca-bundle (and AWS_CA_BUNDLE), and is unhealthy with a TLS error without it."""
    from test_kms_tls import _serve_tls
    import boto3
    from botocore.config import Config
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    srv = tmp_path / "srv"
    srv.mkdir(mode=0o700)
    server, port, ca = _serve_tls(str(srv))
    try:
        kms = boto3.client("kms", endpoint_url=f"https://127.0.0.1:{port}", region_name="us-east-1",
                           aws_access_key_id=AKID, aws_secret_access_key=SECRET, verify=ca,
                           config=Config(retries={"max_attempts": 1}))
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        endpoint = f"https://127.0.0.1:{port}"
        for name, extra, env_extra in (("flag", ["--ca-bundle", ca], None), ("env", [], {"AWS_CA_BUNDLE": ca})):
            (tmp_path / name).mkdir()
            plugin, sock = _plugin(str(tmp_path / name), endpoint, key_id, extra=extra, env_extra=env_extra)
            try:
                with grpc.insecure_channel(f"unix://{sock}") as ch:
                    c = v2g.KeyManagementServiceStub(ch)
                    assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok"), \
                        open(tmp_path / name / "plugin.log").read()
                    seed = os.urandom(32)
                    e = c.Encrypt(v2.EncryptRequest(plaintext=seed, uid="t1"), timeout=3)
                    d = c.Decrypt(v2.DecryptRequest(ciphertext=e.ciphertext, uid="t2", key_id=e.key_id,
                                                    annotations=dict(e.annotations)), timeout=3)
                    assert d.plaintext == seed
            finally:
                _stop(plugin)
        # Without the CA: the system roots do not know it, so the plugin is unhealthy and says why.
        (tmp_path / "none").mkdir()
        plugin, sock = _plugin(str(tmp_path / "none"), endpoint, key_id)
        try:
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                c = v2g.KeyManagementServiceStub(ch)
                with pytest.raises(grpc.RpcError) as err:
                    c.Status(v2.StatusRequest(), timeout=3)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                log = open(tmp_path / "none" / "plugin.log").read()
                assert "certificate" in log.lower() or "tls" in log.lower(), log
        finally:
            _stop(plugin)
    finally:
        _stop(server)


def test_start_up_mistakes_are_configuration_errors(tmp_path):
    """No region, or no credentials anywhere in the AWS chain: exit 64 with the fix, at once,
    instead of a plugin that serves and can never be healthy."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base.update({"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
                 "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    common = [envelope_bin(), "plugin", "--backend", "aws", "--key", "alias/k8s", "--endpoint", "http://127.0.0.1:9",
              "--socket", str(tmp_path / "kms.sock"), "--http-addr", "off", "--data-dir", str(tmp_path / "unused")]
    creds = {"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET}
    r = subprocess.run(common, env={**base, **creds}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 64, r.stderr
    assert "no region" in r.stderr and "--region" in r.stderr, r.stderr
    r = subprocess.run(common + ["--region", "us-east-1"], env=base, capture_output=True, text=True, timeout=60)
    assert r.returncode == 64, r.stderr
    assert "found no credentials" in r.stderr and "AWS_ACCESS_KEY_ID" in r.stderr, r.stderr
    assert r.stderr.count("\n") < 5, r.stderr
    assert not (tmp_path / "kms.sock").exists()



def _decrypt_calls(srv_dir):
    """Decrypt records in the key server's audit log (one per request it answered)."""
    import json
    path = srv_dir / "data" / "audit.log"
    return sum(1 for line in path.read_text().splitlines() if line and json.loads(line).get("eventName") == "Decrypt")


def test_local_kek_one_remote_call_after_a_restart_and_refusal_once_the_key_is_disabled(stubs, tmp_path):
    """The local KEK layer (on by default): KMS v1 values written by one plugin process are read
    by the next with one Decrypt at the key server (its audit log counts), and with
    --no-local-kek with one per value; after `DisableKey` the plugin refuses Decrypt from the
    health probe that finds the key disabled on, without asking the key server."""
    v1, v1g = stubs["v1"], stubs["v1_grpc"]
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    srv_dir, server, port, kms = _key_server(tmp_path)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        probe = ["--health-probe", "describe-key"]
        counts = {}
        for mode, extra in (("layer", []), ("direct", ["--no-local-kek"])):
            values = []
            for phase in ("write", "read"):
                d = tmp_path / f"{mode}-{phase}"
                d.mkdir()
                plugin, sock = _plugin(str(d), endpoint, key_id, extra=probe + extra)
                try:
                    with grpc.insecure_channel(f"unix://{sock}") as ch:
                        c = v1g.KeyManagementServiceStub(ch)
                        s = v2g.KeyManagementServiceStub(ch)
                        assert _wait(lambda: s.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                        if phase == "write":
                            for i in range(40):
                                dek = i.to_bytes(4, "big") * 8
                                r = c.Encrypt(v1.EncryptRequest(version="v1beta1", plain=dek), timeout=3)
                                values.append((r.cipher, dek))
                        else:
                            before = _decrypt_calls(srv_dir)
                            for cipher, dek in values:
                                r = c.Decrypt(v1.DecryptRequest(version="v1beta1", cipher=cipher), timeout=3)
                                assert r.plain == dek
                            counts[mode] = _decrypt_calls(srv_dir) - before
                finally:
                    _stop(plugin)
        assert counts == {"layer": 1, "direct": 40}, counts

        # Revocation: the probe that sees the key disabled drops the cached local KEKs.
        (tmp_path / "revoke").mkdir()
        plugin, sock = _plugin(str(tmp_path / "revoke"), endpoint, key_id, extra=probe)
        try:
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                c = v2g.KeyManagementServiceStub(ch)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                seed = os.urandom(32)
                e = c.Encrypt(v2.EncryptRequest(plaintext=seed, uid="r1"), timeout=3)
                assert "local-kek.envelope.dev" in e.annotations and e.ciphertext[0] == 2
                req = v2.DecryptRequest(ciphertext=e.ciphertext, uid="r2", key_id=e.key_id,
                                        annotations=dict(e.annotations))
                assert c.Decrypt(req, timeout=3).plaintext == seed
                before = _decrypt_calls(srv_dir)
                kms.disable_key(KeyId=key_id)
                assert _wait(lambda: "disabled" in c.Status(v2.StatusRequest(), timeout=3).healthz)
                with pytest.raises(grpc.RpcError) as err:
                    c.Decrypt(req, timeout=3)
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
                assert "disabled" in err.value.details()
                assert _decrypt_calls(srv_dir) == before, "refused without a call to the key server"
                kms.enable_key(KeyId=key_id)
                assert _wait(lambda: c.Status(v2.StatusRequest(), timeout=3).healthz == "ok")
                assert c.Decrypt(req, timeout=3).plaintext == seed
        finally:
            _stop(plugin)
    finally:
        _stop(server)
