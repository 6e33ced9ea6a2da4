"""`envelope plugin --backend pkcs11` against SoftHSM2 (a real PKCS#11 token), driven by an
independent gRPC client (Python grpcio): KMS v2 round trip with key_id and annotations bound,
rotation inside the token noticed by the running plugin while old ciphertexts keep decrypting,
concurrent calls through the session pool, and the PIN file rules at start-up.
"""

import concurrent.futures
import os
import signal
import subprocess
import time

import grpc
import pytest

from conftest import pkcs11_envelope
from harness import envelope_bin, free_port, wait_for



def _envelope(t, *args):
    return pkcs11_envelope(t, *args)


class Plugin:
    def __init__(self, t, *extra):
        self.sock = str(t["dir"] / "kms.sock")
        self.log = open(t["dir"] / "plugin.log", "w")
        self.p = subprocess.Popen(
            [envelope_bin(), "plugin", *t["args"], "--key-label", "k8s", "--socket", self.sock,
             "--http-addr", f"127.0.0.1:{free_port()}", "--health-interval", "200ms", *extra],
            env=t["env"], stdout=subprocess.DEVNULL, stderr=self.log)
        wait_for(lambda: self.p.poll() is not None or os.path.exists(self.sock), 30, "the plugin socket")
        assert self.p.poll() is None, (t["dir"] / "plugin.log").read_text()

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        assert self.p.wait(timeout=20) == 0
        self.log.close()


@pytest.fixture
def plugin(token):
    p = Plugin(token)
    yield p
    p.stop()


def _client(stubs, plugin):
    ch = grpc.insecure_channel(f"unix://{plugin.sock}", options=[("grpc.default_authority", "localhost")])
    return stubs["v2_grpc"].KeyManagementServiceStub(ch)


def _status(stubs, c):
    return c.Status(stubs["v2"].StatusRequest(), timeout=5)


def _decrypt(stubs, c, e, uid="u", **change):
    req = stubs["v2"].DecryptRequest(ciphertext=e.ciphertext, uid=uid, key_id=e.key_id,
                                     annotations=dict(e.annotations))
    for k, v in change.items():
        setattr(req, k, v)
    return c.Decrypt(req, timeout=5).plaintext


def test_round_trip_inside_the_token(stubs, plugin):
    c = _client(stubs, plugin)
    st = _status(stubs, c)
    assert st.version == "v2beta1" and st.healthz == "ok" and st.key_id.startswith("pkcs11-")
    seed = os.urandom(32)
    e = c.Encrypt(stubs["v2"].EncryptRequest(plaintext=seed, uid="u1"), timeout=5)
    assert e.key_id == st.key_id
    assert seed not in e.ciphertext
    assert _decrypt(stubs, c, e) == seed
    # key_id is bound: the same ciphertext under another key_id is refused.
    with pytest.raises(grpc.RpcError):
        _decrypt(stubs, c, e, key_id="pkcs11-someone-else")
    # A flipped byte in the token's GCM output is refused, never decrypted to other bytes.
    bad = bytearray(e.ciphertext)
    bad[-1] ^= 1
    with pytest.raises(grpc.RpcError):
        _decrypt(stubs, c, e, ciphertext=bytes(bad))


def test_rotation_in_the_token_reaches_the_running_plugin(stubs, token, plugin):
    c = _client(stubs, plugin)
    old = c.Encrypt(stubs["v2"].EncryptRequest(plaintext=b"before", uid="u"), timeout=5)
    r = _envelope(token, "key", "rotate", "k8s")
    assert r.returncode == 0, r.stderr
    new_id = wait_for(lambda: (k := _status(stubs, c).key_id) != old.key_id and k, 10, "the new key_id")
    new = c.Encrypt(stubs["v2"].EncryptRequest(plaintext=b"after", uid="u"), timeout=5)
    assert new.key_id == new_id
    # The older object keeps decrypting until an operator destroys it.
    assert _decrypt(stubs, c, old) == b"before"
    assert _decrypt(stubs, c, new) == b"after"


def test_concurrent_calls_through_the_session_pool(stubs, token):
    p = Plugin(token, "--pkcs11-sessions", "4")
    try:
        c = _client(stubs, p)

        def one(i):
            seed = i.to_bytes(4, "big") * 8
            e = c.Encrypt(stubs["v2"].EncryptRequest(plaintext=seed, uid=f"u{i}"), timeout=10)
            return _decrypt(stubs, c, e, uid=f"u{i}") == seed

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            assert all(pool.map(one, range(400)))
    finally:
        p.stop()


def test_a_pin_file_others_can_read_is_refused_at_start(token):
    token["pin"].chmod(0o644)
    r = subprocess.run([envelope_bin(), "plugin", *token["args"], "--key-label", "k8s", "--socket",
                        str(token["dir"] / "x.sock"), "--http-addr", "off"],
                       env=token["env"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 64, r.stderr
    assert "5678" not in r.stderr + r.stdout


def test_a_wrong_pin_is_a_clear_error_and_the_pin_is_never_shown(token):
    token["pin"].write_text("0000\n")
    r = _envelope(token, "key", "describe", "k8s")
    assert r.returncode != 0
    assert "PIN" in r.stderr and "0000" not in r.stderr, r.stderr
