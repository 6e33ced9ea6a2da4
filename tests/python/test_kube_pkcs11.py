"""The plugin with `--backend pkcs11` (the key in a SoftHSM2 token) behind the real
kube-apiserver and etcd: Secrets written through the API are stored as KMS v2 envelopes under
the token key's key_id, read back after a kube-apiserver restart, and a rotation inside the token
moves new writes to the new key_id while older Secrets stay readable.
"""

import os
import time

from conftest import pkcs11_envelope
from harness import wait_for
from kube import Plugin, kms_v2

VALUE = b"kept in an HSM"


def test_secrets_through_kube_apiserver_with_the_key_in_a_token(cluster, token):
    etcd, api, plugins = cluster
    d = str(token["dir"])
    args = [*token["args"], "--key-label", "k8s", "--socket", os.path.join(d, "kms.sock"), "--http-addr", "off",
            "--health-interval", "1s"]
    p = Plugin(d, args, env=token["env"])
    plugins.append(p)
    api.start(p.config())
    api.kubectl("create", "namespace", "hsm")
    api.create_secret("hsm", "db", VALUE)
    assert api.read_secret("hsm", "db") == VALUE
    raw = etcd.get("/registry/secrets/hsm/db")
    assert raw.startswith(b"k8s:enc:kms:v2:envelope:") and VALUE not in raw
    _, key_id = kms_v2(raw)
    assert key_id.startswith("pkcs11-")

    api.restart(p.config())
    assert api.read_secret("hsm", "db") == VALUE

    r = pkcs11_envelope(token, "key", "rotate", "k8s")
    assert r.returncode == 0, r.stderr
    n = [0]

    def new_writes_use_a_new_key():
        api.readyz("kms-providers")
        n[0] += 1
        api.create_secret("hsm", f"after-{n[0]}", b"x")
        return kms_v2(etcd.get(f"/registry/secrets/hsm/after-{n[0]}"))[1] != key_id

    started = time.time()
    wait_for(new_writes_use_a_new_key, 180, "writes under the rotated key", interval=1)
    print(f"rotation reached new writes after {time.time() - started:.1f}s")
    assert kms_v2(etcd.get("/registry/secrets/hsm/db"))[1] == key_id
    assert api.read_secret("hsm", "db") == VALUE
