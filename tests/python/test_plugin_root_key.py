"""The plugin's embedded key store with a root key that is not a file on disk: derived from a
passphrase (`--root-key passphrase-file:PATH`) or wrapped by a key inside a PKCS#11 token
(`--root-key pkcs11:…`, SoftHSM2: "auto-unseal"). Each is checked through a plugin restart with
an independent grpcio client, `envelope key` on the same store, and a start without the root
source, which must be refused without creating a root key file.
"""

import os
import signal
import subprocess

import grpc
import pytest

from conftest import SOFTHSM_MODULE, pkcs11_envelope
from harness import envelope_bin, wait_for


def _forms(data):
    return sorted(n for n in os.listdir(data) if n.startswith("root."))


def _start(d, root, env):
    sock = os.path.join(d, "kms.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    args = [envelope_bin(), "plugin", "--data-dir", os.path.join(d, "data"), "--socket", sock, "--http-addr", "off"]
    if root:
        args += ["--root-key", root]
    log = open(os.path.join(d, "plugin.err"), "a")
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_for(lambda: p.poll() is not None or os.path.exists(sock), 30, "the plugin socket")
    assert p.poll() is None, open(os.path.join(d, "plugin.err")).read()
    return p, sock


def _stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0


def _round_trip(stubs, sock, seed=None, e=None):
    ch = grpc.insecure_channel(f"unix://{sock}", options=[("grpc.default_authority", "localhost")])
    c = stubs["v2_grpc"].KeyManagementServiceStub(ch)
    if e is None:
        e = c.Encrypt(stubs["v2"].EncryptRequest(plaintext=seed, uid="u"), timeout=10)
    req = stubs["v2"].DecryptRequest(ciphertext=e.ciphertext, uid="u", key_id=e.key_id,
                                     annotations=dict(e.annotations))
    return e, c.Decrypt(req, timeout=10).plaintext


def _check(stubs, tmp_path, root, form, env):
    d = str(tmp_path)
    data = os.path.join(d, "data")
    p, sock = _start(d, root, env)
    try:
        e, plain = _round_trip(stubs, sock, seed=b"s" * 32)
        assert plain == b"s" * 32
    finally:
        _stop(p)
    assert _forms(data) == [form], "no root.key on disk"
    # `envelope key` opens the same store with the same root.
    r = subprocess.run([envelope_bin(), "key", "--data-dir", data, "--root-key", root, "list"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "kubernetes" in r.stdout, r.stderr
    # Restarted, it decrypts what it wrote.
    p, sock = _start(d, root, env)
    try:
        assert _round_trip(stubs, sock, e=e)[1] == b"s" * 32
    finally:
        _stop(p)
    # Started without the root source: refused, and no root.key appears.
    r = subprocess.run([envelope_bin(), "plugin", "--data-dir", data, "--socket", os.path.join(d, "x.sock"),
                        "--http-addr", "off"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stderr
    assert _forms(data) == [form]


def test_a_passphrase_root(stubs, tmp_path):
    phrase = tmp_path / "passphrase"
    phrase.write_text("correct horse battery staple\n")
    phrase.chmod(0o600)
    _check(stubs, tmp_path, f"passphrase-file:{phrase}", "root.passphrase", dict(os.environ))


def test_an_hsm_root_unsealed_by_the_token(stubs, token):
    assert pkcs11_envelope(token, "key", "create", "root").returncode == 0
    uri = f"pkcs11:token=kms;object=root?module-path={SOFTHSM_MODULE}&pin-source=file:{token['pin']}"
    d = token["dir"] / "store"
    d.mkdir()
    _check(stubs, d, uri, "root.pkcs11", token["env"])
    assert "5678" not in (d / "data" / "root.pkcs11").read_text()


def test_root_key_is_refused_for_other_backends(tmp_path):
    r = subprocess.run([envelope_bin(), "plugin", "--backend", "aws", "--key", "alias/k", "--region", "us-east-1",
                        "--root-key", "passphrase-file:/x", "--socket", str(tmp_path / "s.sock"),
                        "--http-addr", "off"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 64 and "root-key" in r.stderr, r.stderr


@pytest.mark.parametrize("bad", ["passphrase:/x", "root.key"])
def test_a_malformed_root_key_is_a_configuration_error(tmp_path, bad):
    r = subprocess.run([envelope_bin(), "plugin", "--root-key", bad, "--data-dir", str(tmp_path / "d"),
                        "--socket", str(tmp_path / "s.sock"), "--http-addr", "off"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 64 and "root-key" in r.stderr, r.stderr
