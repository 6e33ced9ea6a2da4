"""envelope against the program it serves: a real kube-apiserver and etcd (scripts/kube-peers),
driven with kubectl, configured with the EncryptionConfiguration the plugin prints.

Each test is an operator's path: the walkthrough, restarts, rotation, KMS v1, key migrations
(one process, two processes, embedded → the aws backend on `envelope kms serve`), an outage,
and proving/recovering with `envelope inspect` / `envelope decrypt`.
"""

import json
import os
import signal
import subprocess
import time

import boto3

from harness import envelope_bin, free_port, wait_for
from kube import Plugin, encryption_config, kms_v2

SECRET_VALUE = b"am i safe?"


def embedded(d, socket, *extra, data="data"):
    return ["--socket", os.path.join(d, socket), "--data-dir", os.path.join(d, data), "--http-addr", "off",
            "--health-interval", "1s", *extra]


def key_json(d, *args, data="data"):
    r = subprocess.run([envelope_bin(), "key", "--data-dir", os.path.join(d, data), "-o", "json", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def stored(etcd, ns, name):
    raw = etcd.get(f"/registry/secrets/{ns}/{name}")
    assert raw is not None, f"{ns}/{name} not in etcd"
    return raw


def assert_readable(api, expected):
    for (ns, name), value in expected.items():
        assert api.read_secret(ns, name) == value, f"{ns}/{name}"


def write_eventually(api, ns, name, value, timeout=120):
    """Creates a Secret, retrying while kube-apiserver reconnects to a restarted plugin."""
    def attempt():
        r = api.create_secret(ns, name, value, check=False)
        if r.returncode != 0 and b"AlreadyExists" in r.stderr:
            return True
        return r.returncode == 0
    wait_for(attempt, timeout, f"a write of {ns}/{name} to succeed")


def test_walkthrough_restarts_and_rotation(cluster, tmp_path):
    etcd, api, plugins = cluster
    d = str(tmp_path)
    p = Plugin(d, embedded(d, "kms.sock"))
    plugins.append(p)
    api.start(p.config())
    api.kubectl("create", "namespace", "secrets-demo")
    api.create_secret("secrets-demo", "db", SECRET_VALUE)
    assert api.read_secret("secrets-demo", "db") == SECRET_VALUE

    raw = stored(etcd, "secrets-demo", "db")
    assert raw.startswith(b"k8s:enc:kms:v2:envelope:"), raw[:40]
    assert SECRET_VALUE not in raw and b"am i safe" not in raw
    name, key_id = kms_v2(raw)
    assert (name, key_id) == ("envelope", key_json(d, "describe", "kubernetes")["kms_key_id"])
    assert api.readyz("kms-providers") == (200, "ok")

    # kube-apiserver restart, then read.
    api.restart(p.config())
    assert api.read_secret("secrets-demo", "db") == SECRET_VALUE

    # Plugin restart: SIGTERM, then kill -9 (a stale socket file is left behind); read and write.
    expected = {("secrets-demo", "db"): SECRET_VALUE}
    for sig, name in ((signal.SIGTERM, "after-term"), (signal.SIGKILL, "after-kill")):
        p.restart(sig=sig)
        write_eventually(api, "secrets-demo", name, name.encode())
        expected[("secrets-demo", name)] = name.encode()
        assert_readable(api, expected)

    # Rotation: new writes carry the new key_id (the plugin notices within its 1 s health
    # interval; kube-apiserver re-reads Status when /readyz is polled), old Secrets still read.
    new_key_id = key_json(d, "rotate", "kubernetes")["kms_key_id"]
    assert new_key_id != key_id
    started, n = time.time(), [0]

    def new_writes_use_the_new_key():
        api.readyz("kms-providers")
        n[0] += 1
        api.create_secret("secrets-demo", f"rotated-{n[0]}", b"r")
        return kms_v2(stored(etcd, "secrets-demo", f"rotated-{n[0]}"))[1] == new_key_id

    wait_for(new_writes_use_the_new_key, 180, "writes under the rotated key_id", interval=1)
    print(f"rotation reached new writes after {time.time() - started:.1f}s")
    assert kms_v2(stored(etcd, "secrets-demo", "db"))[1] == key_id, "old Secrets keep their key_id"
    assert_readable(api, expected)


def test_kms_v1_provider_on_the_same_socket(cluster, tmp_path):
    etcd, api, plugins = cluster
    d = str(tmp_path)
    p = Plugin(d, embedded(d, "kms.sock", "--kms-api-version", "v1"))
    plugins.append(p)
    config = p.config()
    assert "apiVersion: v1\n" in config and "cachesize:" in config
    api.start(config, extra=["--feature-gates=KMSv1=true"])
    api.kubectl("create", "namespace", "legacy")
    api.create_secret("legacy", "v1", SECRET_VALUE)
    assert api.read_secret("legacy", "v1") == SECRET_VALUE
    raw = stored(etcd, "legacy", "v1")
    assert raw.startswith(b"k8s:enc:kms:v1:envelope:"), raw[:40]
    assert SECRET_VALUE not in raw
    api.restart(config, extra=["--feature-gates=KMSv1=true"])
    assert api.read_secret("legacy", "v1") == SECRET_VALUE


def reencrypt_with_kubectl(api):
    """The documented re-write: every Secret read and replaced unchanged."""
    out = api.kubectl("get", "secrets", "-A", "-o", "json").stdout
    api.kubectl("replace", "-f", "-", input=out)


def prefixes(etcd):
    out = {}
    for k in etcd.keys("/registry/secrets/"):
        raw = etcd.get(k)
        out[k] = raw.split(b":")[4].decode() if raw.startswith(b"k8s:enc:kms:") else "identity"
    return out


def migrate(etcd, api, steps):
    """Runs a key migration in the order an operator does it. `steps` are callables returning the
    EncryptionConfiguration for that step; after each one every Secret written so far reads back,
    and a new Secret is written under the step's first provider."""
    expected = {}
    for i, (label, config_of, writer_name) in enumerate(steps):
        config = config_of()
        if api.proc is None:
            api.start(config)
            api.kubectl("create", "namespace", "app")
        else:
            api.restart(config)
        assert_readable(api, expected)
        if label == "reencrypt":
            reencrypt_with_kubectl(api)
            assert set(prefixes(etcd).values()) == {writer_name}, prefixes(etcd)
            continue
        name = f"s{i}-{label}"
        write_eventually(api, "app", name, name.encode())
        expected[("app", name)] = name.encode()
        assert kms_v2(stored(etcd, "app", name))[0] == writer_name, (label, prefixes(etcd))
        assert_readable(api, expected)
    return expected


def migrate_between_processes(etcd, api, old, new, labels, providers):
    """migrate() from the running plugin `old` to a second plugin process that `new()` starts when
    first called: `old` alone, both (old first, then new first), a re-encryption, `new` alone;
    then `old` is stopped (its key store no longer needed) and every Secret reads back without it.
    labels name the two in the Secrets' names, providers are their provider names."""
    (old_label, new_label), (old_name, new_name) = labels, providers
    migrate(etcd, api, [
        (old_label, lambda: old.config(), old_name),
        (f"{new_label}-second", lambda: encryption_config(old.providers() + new().providers()), old_name),
        (f"{new_label}-first", lambda: encryption_config(new().providers() + old.providers()), new_name),
        ("reencrypt", lambda: encryption_config(new().providers() + old.providers()), new_name),
        (f"{old_label}-removed", lambda: new().config(), new_name),
    ])
    old.stop()
    for ns, name in api.secret_names():
        api.read_secret(ns, name)


def test_key_migration_with_two_instances_in_one_process(cluster, tmp_path):
    etcd, api, plugins = cluster
    d = str(tmp_path)
    old = ["--key", "old", "--socket", f"{d}/old.sock", "--provider-name", "envelope"]
    new = ["--key", "new", "--socket", f"{d}/new.sock", "--provider-name", "envelope-new"]
    common = ["--data-dir", f"{d}/data", "--http-addr", "off", "--health-interval", "1s"]
    p = Plugin(d, ["--key", "old", "--socket", f"{d}/old.sock", *common])
    plugins.append(p)

    def step(args):
        def config():
            if p.args != args:
                p.restart(args)
            return p.config()
        return config

    names = lambda: [line.split(":")[1].strip() for line in p.config().splitlines() if line.strip().startswith("name:")]  # noqa: E731
    migrate(etcd, api, [
        ("alone", step(["--key", "old", "--socket", f"{d}/old.sock", *common]), "envelope"),
        ("new-second", step([*old, *new, *common]), "envelope"),
        ("new-first", step([*new, *old, *common]), "envelope-new"),
        ("reencrypt", step([*new, *old, *common]), "envelope-new"),
        ("old-removed", step([*new, *common]), "envelope-new"),
    ])
    assert names() == ["envelope-new"]


def test_key_migration_with_two_processes(cluster, tmp_path):
    etcd, api, plugins = cluster
    d = str(tmp_path)
    old = Plugin(d, embedded(d, "old.sock", data="data-old"), name="old")
    plugins.append(old)
    new = [None]

    def start_new():
        if new[0] is None:
            new[0] = Plugin(d, embedded(d, "new.sock", "--provider-name", "envelope-new", data="data-new"), name="new")
            plugins.append(new[0])
        return new[0]

    migrate_between_processes(etcd, api, old, start_new, ("old", "new"), ("envelope", "envelope-new"))


AKID, SECRET = "AKIAENVELOPEKUBEE2E1", "kube-e2e-secret-0123456789abcdefghijklm"


def test_migration_from_the_embedded_backend_to_the_key_server(cluster, tmp_path):
    etcd, api, plugins = cluster
    d = str(tmp_path)
    creds = os.path.join(d, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n  principal: arn:aws:iam::111122223333:user/k8s\n")
    os.chmod(creds, 0o600)
    port = free_port()
    kms = subprocess.Popen([envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off",
                            "--data-dir", os.path.join(d, "kms-data"), "--credentials", creds],
                           stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "kms.err"), "w"))
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=AKID,
                              aws_secret_access_key=SECRET)
        key = wait_for(lambda: client.create_key(Description="kubernetes secrets")["KeyMetadata"], 30, "the key server")
        client.create_alias(AliasName="alias/k8s", TargetKeyId=key["KeyId"])

        embedded_plugin = Plugin(d, embedded(d, "embedded.sock"), name="embedded")
        plugins.append(embedded_plugin)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
        aws_plugin = [None]

        def aws():
            if aws_plugin[0] is None:
                aws_plugin[0] = Plugin(d, ["--backend", "aws", "--endpoint", endpoint, "--region", "us-east-1",
                                           "--key", "alias/k8s", "--socket", os.path.join(d, "aws.sock"),
                                           "--provider-name", "envelope-kms", "--http-addr", "off",
                                           "--health-interval", "1s", "--data-dir", os.path.join(d, "unused")],
                                       name="aws", env=env)
                plugins.append(aws_plugin[0])
            return aws_plugin[0]

        migrate_between_processes(etcd, api, embedded_plugin, aws, ("embedded", "kms"), ("envelope", "envelope-kms"))
    finally:
        kms.send_signal(signal.SIGTERM)
        kms.wait(timeout=30)


def test_plugin_outage_and_recovery(cluster, tmp_path):
    etcd, api, plugins = cluster
    d = str(tmp_path)
    p = Plugin(d, embedded(d, "kms.sock"))
    plugins.append(p)
    api.start(p.config())
    api.kubectl("create", "namespace", "outage")
    api.create_secret("outage", "before", SECRET_VALUE)
    assert api.read_secret("outage", "before") == SECRET_VALUE

    p.stop()
    # Reads of Secrets whose DEK seed kube-apiserver has cached keep working.
    for _ in range(5):
        assert api.read_secret("outage", "before") == SECRET_VALUE
    # Writes go on under the cached seed only until kube-apiserver's KMS v2 state expires; then
    # they fail with an error that names the KMS provider.
    started, n, err = time.time(), [0], [b""]

    def write_fails():
        n[0] += 1
        r = api.create_secret("outage", f"during-{n[0]}", b"x", check=False)
        err[0] = r.stderr
        return r.returncode != 0

    wait_for(write_fails, 300, "writes to fail while the plugin is down", interval=2)
    print(f"writes failed {time.time() - started:.0f}s into the outage: {err[0].decode(errors='replace').strip()}")
    # kube-apiserver's own words: the cached DEK seed (encryptedDEKSource) has expired.
    assert b"encryptedDEKSource" in err[0] and b"expired" in err[0], err[0]
    status = api.readyz("kms-providers")
    assert status[0] != 200, status
    assert api.read_secret("outage", "before") == SECRET_VALUE

    p.start()
    write_eventually(api, "outage", "after", b"back", timeout=180)
    wait_for(lambda: api.readyz("kms-providers") == (200, "ok"), 120, "/readyz/kms-providers to recover")
    assert api.read_secret("outage", "after") == b"back"
    assert api.read_secret("outage", "before") == SECRET_VALUE


def test_inspect_agrees_with_the_api_and_decrypt_recovers_without_it(cluster, tmp_path):
    etcd, api, plugins = cluster
    d = str(tmp_path)
    # One Secret written before encryption was configured: stored in plaintext.
    api.start()
    api.kubectl("create", "namespace", "proof")
    api.create_secret("proof", "plain", b"written before encryption")
    p = Plugin(d, embedded(d, "kms.sock"))
    plugins.append(p)
    api.restart(p.config())
    values = {"plain": b"written before encryption"}
    for name in ("alpha", "beta", "gamma"):
        api.create_secret("proof", name, name.encode() * 3)
        values[name] = name.encode() * 3
    key_id = key_json(d, "describe", "kubernetes")["kms_key_id"]

    r = subprocess.run([envelope_bin(), "inspect", "--etcd", etcd.url, "-o", "json", "--plugin-socket", f"{d}/kms.sock"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {(o["namespace"], o["name"]): o for o in json.loads(r.stdout)["objects"]}
    assert sorted(rows) == api.secret_names()
    for (ns, name), row in rows.items():
        raw = stored(etcd, ns, name)
        if name == "plain":
            assert row["provider"] == "identity" and row["encrypted"] is False
            assert b"written before encryption" in raw
        else:
            assert (row["provider"], row["provider_name"], row["key_id"], row["stale"]) == ("kms-v2", "envelope", key_id, False)
            assert (row["provider_name"], row["key_id"]) == kms_v2(raw)
    r = subprocess.run([envelope_bin(), "inspect", "--etcd", etcd.url, "-o", "summary", "--fail-on-plaintext"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr

    # Disaster: kube-apiserver is gone; the key store recovers every Secret from etcd.
    api.stop()
    p.stop()
    for name, value in values.items():
        r = subprocess.run([envelope_bin(), "decrypt", "--etcd", etcd.url, "--etcd-key", f"/registry/secrets/proof/{name}",
                            "--data-dir", f"{d}/data", "-o", "json"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        obj = json.loads(r.stdout)
        import base64
        assert base64.b64decode(obj["data"]["data"]) == value, obj


def test_rotate_then_reencrypt_leaves_nothing_stale(cluster, tmp_path):
    etcd, api, plugins = cluster
    d = str(tmp_path)
    p = Plugin(d, embedded(d, "kms.sock"))
    plugins.append(p)
    api.start(p.config())
    api.kubectl("create", "namespace", "re")
    expected = {("re", f"s{i}"): f"value {i}".encode() for i in range(12)}
    for (ns, name), value in expected.items():
        api.create_secret(ns, name, value)
    old = key_json(d, "describe", "kubernetes")["kms_key_id"]
    new = key_json(d, "rotate", "kubernetes")["kms_key_id"]
    etcd_flags = ["--etcd", etcd.url, "--plugin-socket", f"{d}/kms.sock"]

    def envelope(*args, timeout=400):
        return subprocess.run([envelope_bin(), *args], capture_output=True, text=True, timeout=timeout)

    def versions():
        items = json.loads(api.kubectl("get", "secrets", "-n", "re", "-o", "json").stdout)["items"]
        return {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in items}

    # Stale as soon as the plugin reports the rotated key_id.
    wait_for(lambda: envelope("inspect", *etcd_flags, "-o", "summary", "--fail-on-stale").returncode == 3, 30,
             "inspect to see the Secrets as stale")
    reencrypt = ["reencrypt", "--kubeconfig", api.kubeconfig, *etcd_flags, "--provider-name", "envelope"]
    before = versions()
    r = envelope(*reencrypt, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(f"re/s{i}" in r.stdout + r.stderr for i in range(12)), r.stdout + r.stderr
    assert versions() == before, "--dry-run changed nothing"
    assert {kms_v2(stored(etcd, "re", f"s{i}"))[1] for i in range(12)} == {old}

    r = envelope(*reencrypt)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "12 rewritten" in r.stdout, r.stdout
    assert {kms_v2(stored(etcd, "re", f"s{i}"))[1] for i in range(12)} == {new}
    r = envelope("inspect", *etcd_flags, "-o", "summary", "--fail-on-stale")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_readable(api, expected)

    # A rerun finds nothing stale and rewrites nothing; --all rewrites everything.
    current = versions()
    r = envelope(*reencrypt)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rewritten secrets/re/" not in r.stdout and "0 selected" in r.stdout, r.stdout
    assert versions() == current, "a rerun rewrote current objects"
    # --all puts every object through the API (kube-apiserver itself skips storing an unchanged
    # object that is already current, so resource versions need not change).
    r = envelope(*reencrypt, "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Summary: 12 selected" in r.stdout and "0 failed" in r.stdout, r.stdout
    assert {kms_v2(stored(etcd, "re", f"s{i}"))[1] for i in range(12)} == {new}
    assert_readable(api, expected)
