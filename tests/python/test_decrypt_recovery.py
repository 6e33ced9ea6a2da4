"""docs/inspect.md's disaster-recovery recipe, step by step with the real tools: kube-apiserver
stores Secrets through `envelope plugin` (KMS v2) in etcd, the operator saves a raw value with
`etcdctl get --print-value-only KEY > value.bin` (etcdctl 3.6 from scripts/kube-peers, which
appends a newline), and `envelope decrypt --value-file value.bin` recovers the Secret with the key
store alone: no kube-apiserver, no plugin, no etcd; also for a store whose root key is wrapped by
a SoftHSM2 token key or derived from a passphrase (`--root-key`).
"""

import base64
import json
import os
import shlex
import subprocess

from conftest import SOFTHSM_MODULE, pkcs11_envelope
from harness import envelope_bin
from kube import Plugin, peers_bin


def etcdctl_save(etcd, key, path):
    """The recipe's command, through a shell exactly as an operator types it."""
    etcdctl = os.path.join(peers_bin(), "etcdctl")
    cmd = f"{shlex.quote(etcdctl)} --endpoints {etcd.url} get --print-value-only {shlex.quote(key)} > {shlex.quote(path)}"
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with open(path, "rb") as f:
        return f.read()


def decrypt(path, key, data_dir):
    return subprocess.run([envelope_bin(), "decrypt", "--value-file", path, "--etcd-key", key, "--data-dir", data_dir,
                           "-o", "json"], capture_output=True, text=True, timeout=60)


def test_value_saved_with_etcdctl_decrypts_with_the_key_store_alone(cluster, tmp_path):
    etcd, api, plugins = cluster
    d = str(tmp_path)
    data = os.path.join(d, "data")
    # A Secret written before encryption (stored as a plaintext protobuf), then KMS v2 ones.
    api.start()
    api.kubectl("create", "namespace", "prod")
    api.create_secret("prod", "plain", b"written before encryption")
    p = Plugin(d, ["--socket", os.path.join(d, "kms.sock"), "--data-dir", data, "--http-addr", "off"])
    plugins.append(p)
    api.restart(p.config())
    secrets = {"plain": b"written before encryption", "db": b"hunter2\n", "tls": os.urandom(300)}
    for name in ("db", "tls"):
        api.create_secret("prod", name, secrets[name])

    # Disaster: kube-apiserver and the plugin are gone; etcd and the key store are left.
    api.stop()
    p.stop()
    for name, value in secrets.items():
        key = f"/registry/secrets/prod/{name}"
        path = os.path.join(d, f"{name}.bin")
        saved = etcdctl_save(etcd, key, path)
        raw = etcd.get(key)
        assert saved == raw + b"\n", "etcdctl --print-value-only appends one newline"
        assert raw.startswith(b"k8s\x00" if name == "plain" else b"k8s:enc:kms:v2:envelope:"), raw[:30]

        r = decrypt(path, key, data)
        assert r.returncode == 0, r.stderr
        obj = json.loads(r.stdout)
        assert (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]) == ("Secret", "prod", name)
        assert base64.b64decode(obj["data"]["data"]) == value

    # The value is bound to its etcd key (AAD): under another key it does not decrypt.
    r = decrypt(os.path.join(d, "db.bin"), "/registry/secrets/prod/other", data)
    assert r.returncode == 1 and "decryption failed" in r.stderr, r.stderr

    # `etcdctl get` without --print-value-only also prints the key: the error says what to run.
    path = os.path.join(d, "with-key.bin")
    cmd = f"{shlex.quote(os.path.join(peers_bin(), 'etcdctl'))} --endpoints {etcd.url} get /registry/secrets/prod/db > {path}"
    subprocess.run(cmd, shell=True, check=True, timeout=60)
    r = decrypt(path, "/registry/secrets/prod/db", data)
    assert r.returncode == 1, r.stdout
    assert "expected a value starting with k8s:enc:" in r.stderr and "--print-value-only" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_store_sealed_by_a_token_key_or_a_passphrase_decrypts_with_its_root_key(cluster, token):
    """The plugin's store under a SoftHSM2 token key (`--root-key pkcs11:…`, no root.key on disk)
    behind kube-apiserver; with everything but etcd and the data directory gone, `envelope
    decrypt --data-dir DIR --root-key pkcs11:…` recovers the Secret from etcd and from a saved
    value, as `ENVELOPE_ROOT_KEY` too; after `envelope key reseal` to a passphrase,
    `--root-key passphrase-file:PATH` does. Without the right root it is refused, naming it."""
    etcd, api, plugins = cluster
    d = str(token["dir"])
    data = os.path.join(d, "data")
    env = token["env"]
    assert pkcs11_envelope(token, "key", "create", "root").returncode == 0
    uri = f"pkcs11:token=kms;object=root?module-path={SOFTHSM_MODULE}&pin-source=file:{token['pin']}"
    p = Plugin(d, ["--socket", os.path.join(d, "kms.sock"), "--data-dir", data, "--http-addr", "off",
                   "--root-key", uri], env=env)
    plugins.append(p)
    api.start(p.config())
    api.kubectl("create", "namespace", "hsm")
    value = os.urandom(64)
    api.create_secret("hsm", "db", value)
    api.stop()
    p.stop()
    assert sorted(n for n in os.listdir(data) if n.startswith("root.")) == ["root.pkcs11"]
    key = "/registry/secrets/hsm/db"
    assert etcd.get(key).startswith(b"k8s:enc:kms:v2:envelope:")
    path = os.path.join(d, "db.bin")
    etcdctl_save(etcd, key, path)

    def run(args, extra_env=None):
        return subprocess.run([envelope_bin(), "decrypt", "--etcd-key", key, "--data-dir", data, "-o", "json", *args],
                              env=dict(env, **(extra_env or {})), capture_output=True, text=True, timeout=60)

    def recovered(r):
        assert r.returncode == 0, r.stderr
        obj = json.loads(r.stdout)
        assert (obj["metadata"]["namespace"], obj["metadata"]["name"]) == ("hsm", "db")
        return base64.b64decode(obj["data"]["data"])

    assert recovered(run(["--etcd", etcd.url, "--root-key", uri])) == value
    assert recovered(run(["--value-file", path, "--root-key", uri])) == value
    assert recovered(run(["--value-file", path], {"ENVELOPE_ROOT_KEY": uri})) == value

    # Without the token's root (root.key is the default) or with another token key: refused.
    r = run(["--value-file", path])
    assert r.returncode == 1 and "--root-key pkcs11:" in r.stderr and "panicked" not in r.stderr, r.stderr
    assert pkcs11_envelope(token, "key", "create", "other").returncode == 0
    r = run(["--value-file", path, "--root-key", uri.replace("object=root", "object=other")])
    assert r.returncode == 1 and "not by pkcs11:" in r.stderr and "panicked" not in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(data, "root.key"))

    # Resealed to a passphrase, the same value decrypts with it, and no longer with the token.
    phrase = os.path.join(d, "passphrase")
    with open(phrase, "w") as f:
        f.write("a long recovery passphrase\n")
    r = subprocess.run([envelope_bin(), "key", "reseal", "--data-dir", data, "--from", uri,
                        "--to", f"passphrase-file:{phrase}"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert recovered(run(["--value-file", path, "--root-key", f"passphrase-file:{phrase}"])) == value
    r = run(["--value-file", path, "--root-key", uri])
    assert r.returncode == 1 and "passphrase" in r.stderr, r.stderr
    with open(phrase + ".wrong", "w") as f:
        f.write("not the recovery passphrase\n")
    r = run(["--value-file", path, "--root-key", f"passphrase-file:{phrase}.wrong"])
    assert r.returncode == 1 and "wrong root key passphrase" in r.stderr, r.stderr
