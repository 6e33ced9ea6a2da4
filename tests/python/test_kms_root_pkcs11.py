"""`envelope kms serve --root-key pkcs11:…`: the key store's root key wrapped by an AES key in a
SoftHSM2 token (no usable root key on disk), across restarts, and `envelope kms reseal` between
the token key and a root.key file, killed with SIGKILL at random moments and run again."""

import os
import random
import shutil
import signal
import subprocess
import time

from conftest import SOFTHSM_MODULE, pkcs11_envelope
from harness import envelope_bin
from test_kms_audit import _client, _start, _stop


def _uri(t):
    return f"pkcs11:token=kms;object=root?module-path={SOFTHSM_MODULE}&pin-source=file:{t['pin']}"


def _forms(data):
    return sorted(f for f in os.listdir(data) if f in ("root.key", "root.passphrase", "root.pkcs11"))


def _reseal(data, frm, to, env):
    return subprocess.Popen([envelope_bin(), "kms", "reseal", "--data-dir", data, "--from", frm, "--to", to],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _token_present(t):
    util = shutil.which("softhsm2-util") or "/usr/bin/softhsm2-util"
    r = subprocess.run([util, "--show-slots"], env=t["env"], capture_output=True, text=True, timeout=30)
    labels = [line.split(":", 1)[1].strip() for line in r.stdout.splitlines() if line.strip().startswith("Label:")]
    return "kms" in labels


def test_key_server_restarts_and_reseals_under_an_hsm_root_key(token, tmp_path, monkeypatch):
    assert pkcs11_envelope(token, "key", "create", "root").returncode == 0
    monkeypatch.setenv("SOFTHSM2_CONF", token["env"]["SOFTHSM2_CONF"])
    tmp = str(tmp_path)
    data = os.path.join(tmp, "data")
    p, port, _ = _start(tmp, ["--root-key", _uri(token)])
    try:
        kms = _client(port)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"sealed by the token")["CiphertextBlob"]
    finally:
        _stop(p)
    assert _forms(data) == ["root.pkcs11"], "no root key file on disk"
    assert "pin" not in open(os.path.join(data, "root.pkcs11")).read()

    # A restart unwraps the root key in the token again.
    p, port, _ = _start(tmp, ["--root-key", _uri(token)])
    try:
        assert _client(port).decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed by the token"
    finally:
        _stop(p)

    # Without the token key the store does not open (and no root.key is created).
    r = subprocess.run([envelope_bin(), "kms", "serve", "--data-dir", data, "--listen", "127.0.0.1:0",
                        "--http-addr", "off"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "PKCS#11" in r.stderr, r.stderr
    assert _forms(data) == ["root.pkcs11"]

    # Reseal back and forth, killed at random moments: a rerun always finishes, leaving one form.
    # SoftHSM2's file store rewrites token.object in place at every C_Login, so a SIGKILL in that
    # moment destroys the software token itself (a hardware token keeps no such state on the
    # host). The token directory is copied before each kill and put back if SoftHSM2 lost the
    # token; the store in the data directory is never touched by that.
    env = dict(os.environ)
    forms = {"file": ["root.key"], _uri(token): ["root.pkcs11"]}
    tokens = os.path.join(str(token["dir"]), "tokens")
    saved = os.path.join(tmp, "tokens.saved")
    cur = _uri(token)
    rnd = random.Random(7)
    for i in range(12):
        new = "file" if cur != "file" else _uri(token)
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(tokens, saved)
        r = _reseal(data, cur, new, env)
        if i % 3 != 2:
            time.sleep(rnd.uniform(0.0, 0.25))
            r.send_signal(signal.SIGKILL)
        r.wait(timeout=30)
        if not _token_present(token):
            shutil.rmtree(tokens)
            shutil.copytree(saved, tokens)
            assert _token_present(token)
        again = _reseal(data, cur, new, env)
        out, err = again.communicate(timeout=30)
        assert again.returncode == 0, err
        assert _forms(data) == forms[new], (i, out, _forms(data))
        cur = new

    p, port, _ = _start(tmp, ["--root-key", _uri(token)] if cur != "file" else [])
    try:
        assert _client(port).decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed by the token"
    finally:
        _stop(p)
