"""`envelope kms backup` / `restore` of stores whose root key is not a file: wrapped by a SoftHSM2
token key (`root.pkcs11`, saved next to the backup as `<backup>.pkcs11`) or derived from a
passphrase (`<backup>.passphrase`). A restore takes the same `--root-key` spellings as `kms serve`
and the plugin, and a root that does not open the backup is refused with what it needs, changing
nothing. The key server's store is checked through boto3, the plugin's through grpcio."""

import os
import subprocess

import pytest

from conftest import SOFTHSM_MODULE, pkcs11_envelope
from harness import envelope_bin
from test_kms_audit import _client, _start, _stop
from test_plugin_root_key import _round_trip
from test_plugin_root_key import _start as _plugin_start
from test_plugin_root_key import _stop as _plugin_stop


def _uri(t, obj="root"):
    return f"pkcs11:token=kms;object={obj}?module-path={SOFTHSM_MODULE}&pin-source=file:{t['pin']}"


def _kms(*args, env=None):
    return subprocess.run([envelope_bin(), "kms", *args], capture_output=True, text=True, timeout=60, env=env)


def _forms(data):
    return sorted(f for f in os.listdir(data) if f in ("root.key", "root.passphrase", "root.pkcs11"))


def _refused(r, *needles):
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "panicked" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def test_a_token_sealed_key_server_restores_under_its_token_key_only(token, tmp_path, monkeypatch):
    assert pkcs11_envelope(token, "key", "create", "root").returncode == 0
    assert pkcs11_envelope(token, "key", "create", "other").returncode == 0
    monkeypatch.setenv("SOFTHSM2_CONF", token["env"]["SOFTHSM2_CONF"])
    src = tmp_path / "src"
    src.mkdir(mode=0o700)
    backup = tmp_path / "kms.backup"
    p, port, _ = _start(str(src), ["--root-key", _uri(token)])
    try:
        kms = _client(port)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/hsm", TargetKeyId=key_id)
        before = kms.encrypt(KeyId="alias/hsm", Plaintext=b"before rotation")["CiphertextBlob"]
        kms.rotate_key_on_demand(KeyId=key_id)
        after = kms.encrypt(KeyId="alias/hsm", Plaintext=b"after rotation")["CiphertextBlob"]
        # Backed up while the server runs, without the token: nothing is unsealed.
        r = _kms("backup", "--data-dir", str(src / "data"), "--out", str(backup), env={"PATH": os.environ["PATH"]})
        assert r.returncode == 0, r.stderr
        assert "kms.backup.pkcs11" in r.stdout and "--root-key pkcs11:" in r.stdout, r.stdout
    finally:
        _stop(p)
    saved = tmp_path / "kms.backup.pkcs11"
    assert saved.read_bytes() == (src / "data" / "root.pkcs11").read_bytes()
    assert oct(saved.stat().st_mode & 0o777) == "0o600"
    assert not (tmp_path / "kms.backup.passphrase").exists()
    assert "5678" not in saved.read_text()

    # A second store under the same token key: its wrapped root key is another root key.
    stranger = tmp_path / "stranger"
    r = subprocess.run([envelope_bin(), "key", "--data-dir", str(stranger), "--root-key", _uri(token), "create", "x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    plain = tmp_path / "plain"
    subprocess.run([envelope_bin(), "key", "create", "x", "--data-dir", str(plain)], check=True, capture_output=True)
    phrase = tmp_path / "passphrase"
    phrase.write_text("a long operator passphrase\n")

    # Every root that does not open the backup is refused, and the target stays empty.
    dst = tmp_path / "dst" / "data"
    restore = ["restore", "--data-dir", str(dst), "--from", str(backup)]
    _refused(_kms(*restore), "no root key at", "root.pkcs11", "--root-key pkcs11:")
    _refused(_kms(*restore, "--root-key", str(plain / "root.key")), "does not open with this root key",
             "--root-key pkcs11:")
    _refused(_kms(*restore, "--root-key", f"passphrase-file:{phrase}"), "kms.backup.passphrase")
    _refused(_kms(*restore, "--root-key", _uri(token, "other")), "not by pkcs11:token=kms;object=other")
    _refused(_kms(*restore, "--root-key", _uri(token), "--root-params", str(stranger / "root.pkcs11")),
             "does not open with this root key")
    _refused(_kms(*restore, "--root-key", "pkcs11:token=kms;object=root"), "module-path")
    assert not (dst / "keystore.db").exists()
    assert not dst.exists() or _forms(dst) == []

    # Its own token key restores it; the restored store holds no root key file.
    r = _kms(*restore, "--root-key", _uri(token))
    assert r.returncode == 0, r.stderr
    assert _forms(dst) == ["root.pkcs11"]
    p, port, _ = _start(str(dst.parent), ["--root-key", _uri(token)])
    try:
        kms = _client(port)
        assert kms.decrypt(CiphertextBlob=before)["Plaintext"] == b"before rotation"
        assert kms.decrypt(CiphertextBlob=after)["Plaintext"] == b"after rotation"
        assert kms.describe_key(KeyId="alias/hsm")["KeyMetadata"]["KeyId"] == key_id
    finally:
        _stop(p)

    # The live store's root.pkcs11 serves as the descriptor too (the root key never changes).
    moved = tmp_path / "moved.backup"
    os.link(backup, moved)
    r = _kms("restore", "--data-dir", str(tmp_path / "again" / "data"), "--from", str(moved),
             "--root-key", _uri(token), "--root-params", str(src / "data" / "root.pkcs11"))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kind", ["pkcs11", "passphrase"])
def test_the_plugins_store_restores_under_its_root(stubs, token, kind):
    """The plugin's embedded store (`envelope plugin --root-key …`, `envelope key`) backed up with
    `kms backup` and restored elsewhere with `kms restore --root-key …`: a ciphertext made
    before decrypts through the plugin started on the restored store."""
    d = token["dir"]
    env = token["env"]
    if kind == "pkcs11":
        assert pkcs11_envelope(token, "key", "create", "root").returncode == 0
        root, form = _uri(token), "root.pkcs11"
    else:
        (d / "passphrase").write_text("correct horse battery staple\n")
        root, form = f"passphrase-file:{d / 'passphrase'}", "root.passphrase"
    (d / "src").mkdir()
    p, sock = _plugin_start(str(d / "src"), root, env)
    try:
        e, plain = _round_trip(stubs, sock, seed=b"k" * 32)
        assert plain == b"k" * 32
    finally:
        _plugin_stop(p)
    backup = d / "plugin.backup"
    r = _kms("backup", "--data-dir", str(d / "src" / "data"), "--out", str(backup), env=env)
    assert r.returncode == 0, r.stderr
    assert (d / f"plugin.backup.{kind}").read_bytes() == (d / "src" / "data" / form).read_bytes()

    (d / "dst").mkdir()
    r = _kms("restore", "--data-dir", str(d / "dst" / "data"), "--from", str(backup), env=env)
    _refused(r, form)
    r = _kms("restore", "--data-dir", str(d / "dst" / "data"), "--from", str(backup), "--root-key", root, env=env)
    assert r.returncode == 0, r.stderr
    assert _forms(d / "dst" / "data") == [form]
    p, sock = _plugin_start(str(d / "dst"), root, env)
    try:
        assert _round_trip(stubs, sock, e=e)[1] == b"k" * 32
    finally:
        _plugin_stop(p)
