"""`envelope kms backup` / `restore`, verified the way an operator would: ciphertexts made before
the backup (before and after a rotation) decrypt through boto3 against a server on the restored
data directory, and nothing key-like is stored in clear."""

import os
import subprocess

import pytest
from botocore.exceptions import ClientError

from harness import envelope_bin
from test_kms_audit import _client, _start, _stop


def _run(*args):
    return subprocess.run([envelope_bin(), "kms", *args], capture_output=True, text=True, timeout=60)


def test_backup_restore_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir(mode=0o700)
    p, port, _ = _start(str(src), [])
    try:
        kms = _client(port)
        key_id = kms.create_key(Description="to back up")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/backed-up", TargetKeyId=key_id)
        before = kms.encrypt(KeyId="alias/backed-up", Plaintext=b"made before rotation",
                             EncryptionContext={"app": "db"})["CiphertextBlob"]
        kms.rotate_key_on_demand(KeyId=key_id)
        after = kms.encrypt(KeyId="alias/backed-up", Plaintext=b"made after rotation")["CiphertextBlob"]
        # Backup while the server runs.
        out = _run("backup", "--data-dir", str(src / "data"), "--out", str(tmp_path / "kms.backup"))
        assert out.returncode == 0, out.stderr
        assert oct(os.stat(tmp_path / "kms.backup").st_mode & 0o777) == "0o600"
    finally:
        _stop(p)

    # No key material or plaintext in clear anywhere in the data directory or the backup.
    for f in list((src / "data").iterdir()) + [tmp_path / "kms.backup"]:
        data = f.read_bytes()
        assert b"made before rotation" not in data and b"made after rotation" not in data, f

    # Restoring without the root key, or with a wrong one, is refused and changes nothing.
    dst = tmp_path / "dst"
    out = _run("restore", "--data-dir", str(dst / "data"), "--from", str(tmp_path / "kms.backup"))
    assert out.returncode == 1 and "root key" in out.stderr, out.stderr
    wrong = tmp_path / "wrong"
    wrong.mkdir(mode=0o700)
    subprocess.run([envelope_bin(), "key", "create", "x", "--data-dir", str(wrong)], check=True, capture_output=True)
    out = _run("restore", "--data-dir", str(dst / "data"), "--from", str(tmp_path / "kms.backup"),
               "--root-key", str(wrong / "root.key"))
    assert out.returncode == 1, out.stdout
    assert not (dst / "data" / "keystore.db").exists()

    out = _run("restore", "--data-dir", str(dst / "data"), "--from", str(tmp_path / "kms.backup"),
               "--root-key", str(src / "data" / "root.key"))
    assert out.returncode == 0, out.stderr
    dst.mkdir(exist_ok=True)
    p, port, _ = _start(str(dst), [])
    try:
        kms = _client(port)
        assert kms.decrypt(CiphertextBlob=before, EncryptionContext={"app": "db"})["Plaintext"] == b"made before rotation"
        assert kms.decrypt(CiphertextBlob=after)["Plaintext"] == b"made after rotation"
        assert kms.describe_key(KeyId="alias/backed-up")["KeyMetadata"]["KeyId"] == key_id
        with pytest.raises(ClientError):
            kms.decrypt(CiphertextBlob=before, EncryptionContext={"app": "other"})
    finally:
        _stop(p)
    # An existing database is only replaced with --force.
    out = _run("restore", "--data-dir", str(dst / "data"), "--from", str(tmp_path / "kms.backup"))
    assert out.returncode == 1 and "force" in out.stderr


def test_passphrase_derived_root_key(tmp_path):
    pw = tmp_path / "passphrase"
    pw.write_text("a long operator passphrase\n")
    p, port, _ = _start(str(tmp_path), ["--root-passphrase-file", str(pw)])
    try:
        kms = _client(port)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        ct = kms.encrypt(KeyId=key_id, Plaintext=b"sealed by a passphrase")["CiphertextBlob"]
    finally:
        _stop(p)
    data = tmp_path / "data"
    assert not (data / "root.key").exists(), "no root key on disk"
    assert (data / "root.passphrase").exists()
    assert b"operator passphrase" not in (data / "root.passphrase").read_bytes()
    # A wrong passphrase refuses to start; the right one decrypts again.
    bad = tmp_path / "bad"
    bad.write_text("another long passphrase")
    creds = tmp_path / "credentials.yaml"
    r = subprocess.run([envelope_bin(), "kms", "serve", "--http-addr", "off", "--listen", "127.0.0.1:0",
                        "--data-dir", str(data), "--credentials", str(creds), "--root-passphrase-file", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "wrong root key passphrase" in r.stderr, r.stderr
    p, port, _ = _start(str(tmp_path), ["--root-passphrase-file", str(pw)])
    try:
        assert _client(port).decrypt(CiphertextBlob=ct)["Plaintext"] == b"sealed by a passphrase"
        # Backup of a passphrase store: the salt and verifier are saved next to it.
        out = _run("backup", "--data-dir", str(data), "--out", str(tmp_path / "pass.backup"))
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "pass.backup.passphrase").exists() and "--root-passphrase-file" in out.stdout
    finally:
        _stop(p)

    # Disaster: the data directory is gone. Restore with the passphrase alone (no root key file).
    dst = tmp_path / "dst"
    r = _run("restore", "--data-dir", str(dst / "data"), "--from", str(tmp_path / "pass.backup"),
             "--root-passphrase-file", str(bad))
    assert r.returncode == 1 and "passphrase" in r.stderr, r.stderr
    assert not (dst / "data" / "keystore.db").exists()
    r = _run("restore", "--data-dir", str(dst / "data"), "--from", str(tmp_path / "pass.backup"),
             "--root-passphrase-file", str(pw))
    assert r.returncode == 0, r.stderr
    assert not (dst / "data" / "root.key").exists()
    p, port, _ = _start(str(dst), ["--root-passphrase-file", str(pw)])
    try:
        assert _client(port).decrypt(CiphertextBlob=ct)["Plaintext"] == b"sealed by a passphrase"
    finally:
        _stop(p)


SEED = """
keys:
  - alias: alias/k8s-master-key
    description: Kubernetes Secrets KEK
    rotation_period_days: 180
    tags: {team: platform}
    policy:
      Version: "2012-10-17"
      Statement:
        - Sid: root
          Effect: Allow
          Principal: {AWS: "arn:aws:iam::111122223333:root"}
          Action: "kms:*"
          Resource: "*"
  - alias: plain-key
"""


def test_seed_file_is_applied_idempotently(tmp_path):
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED)
    p, port, _ = _start(str(tmp_path), ["--seed", str(seed)])
    try:
        kms = _client(port)
        md = kms.describe_key(KeyId="alias/k8s-master-key")["KeyMetadata"]
        assert md["Description"] == "Kubernetes Secrets KEK"
        assert kms.get_key_rotation_status(KeyId=md["KeyId"])["KeyRotationEnabled"] is True
        assert {"TagKey": "team", "TagValue": "platform"} in kms.list_resource_tags(KeyId=md["KeyId"])["Tags"]
        assert '"Sid":"root"' in kms.get_key_policy(KeyId=md["KeyId"], PolicyName="default")["Policy"].replace(" ", "")
        plain = kms.describe_key(KeyId="alias/plain-key")["KeyMetadata"]["KeyId"]
        kms.update_key_description(KeyId=md["KeyId"], Description="changed by an operator")
    finally:
        _stop(p)
    # Applying the same seed again creates nothing and overwrites nothing.
    p, port, _ = _start(str(tmp_path), ["--seed", str(seed)])
    try:
        kms = _client(port)
        again = kms.describe_key(KeyId="alias/k8s-master-key")["KeyMetadata"]
        assert again["KeyId"] == md["KeyId"]
        assert again["Description"] == "changed by an operator"
        assert kms.describe_key(KeyId="alias/plain-key")["KeyMetadata"]["KeyId"] == plain
        assert len(kms.list_keys()["Keys"]) == 2
    finally:
        _stop(p)
    # A malformed seed is a configuration error (exit 64) before anything is served.
    bad = tmp_path / "bad.yaml"
    bad.write_text("keys:\n  - alias: x\n    colour: red\n")
    r = subprocess.run([envelope_bin(), "kms", "serve", "--http-addr", "off", "--listen", "127.0.0.1:0",
                        "--data-dir", str(tmp_path / "data"), "--credentials", str(tmp_path / "credentials.yaml"),
                        "--seed", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 64, r.stderr


def test_no_key_material_or_plaintext_in_clear_on_disk(tmp_path):
    """Imports key material we know, uses it, then searches every file the server wrote."""
    import base64
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    material = bytes(range(100, 132))
    plaintext = b"THE-PLAINTEXT-THAT-MUST-NOT-LEAK"
    p, port, _ = _start(str(tmp_path), [])
    try:
        kms = _client(port)
        key_id = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
        params = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                               WrappingKeySpec="RSA_2048")
        public = serialization.load_der_public_key(params["PublicKey"])
        wrapped = public.encrypt(material, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        kms.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"], EncryptedKeyMaterial=wrapped,
                                ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
        ct = kms.encrypt(KeyId=key_id, Plaintext=plaintext, EncryptionContext={"k": "v"})["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=ct, EncryptionContext={"k": "v"})["Plaintext"] == plaintext
        dk = kms.generate_data_key(KeyId=key_id, NumberOfBytes=32)
        data_key = dk["Plaintext"]
    finally:
        _stop(p)
    needles = [material, material.hex().encode(), base64.b64encode(material),
               plaintext, base64.b64encode(plaintext), data_key, base64.b64encode(data_key)]
    files = [f for f in (tmp_path / "data").rglob("*") if f.is_file()]
    assert any(f.name == "keystore.db" for f in files) and any(f.name == "audit.log" for f in files)
    for f in files:
        blob = f.read_bytes()
        for n in needles:
            assert n not in blob, f"{n[:8]!r}… found in {f}"


def test_backup_and_restore_say_that_the_credentials_are_not_in_the_backup(tmp_path):
    import signal
    import socket

    data = tmp_path / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A server with a generated credentials file in its data directory.
    p = subprocess.Popen([envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off",
                          "--data-dir", str(data)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        # Serving (signal handlers installed, credentials written) once it says so.
        for line in p.stdout:
            if "listening on" in line:
                break
        assert p.poll() is None
        assert (data / "credentials.yaml").exists()
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    out = _run("backup", "--data-dir", str(data), "--out", str(tmp_path / "kms.backup"))
    assert out.returncode == 0, out.stderr
    assert "credentials.yaml" in out.stdout and "NOT in the backup" in out.stdout, out.stdout
    out = _run("restore", "--data-dir", str(tmp_path / "restored"), "--from", str(tmp_path / "kms.backup"),
               "--root-key", str(data / "root.key"))
    assert out.returncode == 0, out.stderr
    assert "no credentials.yaml" in out.stdout, out.stdout
