"""`envelope kms reseal` and `envelope key reseal`, the real binary, killed with SIGKILL right after
each durable step it takes in the data directory, one step per run: every successful fsync or
fdatasync (of a file or of the directory), link, rename and unlink there. The steps are counted by
a small LD_PRELOAD library (crash_after.c, built here with cc) that passes every call on and
raises SIGKILL after the Nth; the binary has no test hook. Run N = 1, 2, … until a run finishes on
its own, so every step is a crash point.

After each kill: the store opens under the old root or the new one (the key server started on a
copy of the data directory) and every ciphertext made before decrypts, under each root that opens;
running the same reseal again succeeds and leaves only the new form and no temporary file, and the
store then opens under the new root alone.

The moves go around every form and both commands: root.key → token key (kms), token key → another
token key (key, one form: a rename), token key → passphrase (kms), passphrase → another passphrase
(key), passphrase → root.key (key). The token is SoftHSM2."""

import os
import shutil
import signal
import subprocess

import pytest

from conftest import SOFTHSM_MODULE, pkcs11_envelope
from harness import envelope_bin, free_port
from test_kms_audit import AKID, PRINCIPAL, SECRET, _client

FORMS = ("root.key", "root.passphrase", "root.pkcs11")


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    cc = shutil.which("cc")
    assert cc, "a C compiler (cc) builds the crash library"
    out = tmp_path_factory.mktemp("shim") / "crash_after.so"
    src = os.path.join(os.path.dirname(__file__), "crash_after.c")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(out), src, "-ldl"], check=True)
    return str(out)


def _forms(data):
    return sorted(f for f in os.listdir(data) if f in FORMS)


def _temporaries(data):
    return [f for f in os.listdir(data) if f.startswith("root.tmp.")]


class Root:
    """A root key source as `reseal --from/--to` spells it, and as `kms serve` takes it."""

    def __init__(self, spec, form, serve_args):
        self.spec, self.form, self.serve_args = spec, form, serve_args

    def __repr__(self):
        return self.form + ":" + self.spec.split("?")[0]


def _serve(work, data, root, env):
    """`kms serve` on `data` under `root`: the running process and its port once it says it is
    listening (it binds before it opens the store), or None and its stderr when it refuses to
    open the store."""
    creds = os.path.join(work, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n  principal: {PRINCIPAL}\n")
    os.chmod(creds, 0o600)
    port = free_port()
    err = os.path.join(work, "serve.err")
    p = subprocess.Popen([envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off",
                          "--data-dir", data, "--credentials", creds, *root.serve_args],
                         env=env, stdout=subprocess.PIPE, stderr=open(err, "w"), text=True)
    for line in p.stdout:
        if "listening on" in line:
            return (p, port), ""
    assert p.wait(timeout=30) != 0
    return None, open(err).read()


def _opens_and_decrypts(work, data, root, env, ciphertexts):
    """Whether the store opens under `root`; if it does, every ciphertext must decrypt."""
    served, err = _serve(work, data, root, env)
    if served is None:
        assert "panicked" not in err, err
        return False
    p, port = served
    try:
        kms = _client(port)
        for blob, plain in ciphertexts:
            assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == plain, root
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
    return True


def _reseal(command, data, old, new, env):
    return subprocess.run([envelope_bin(), command, "reseal", "--data-dir", data, "--from", old.spec, "--to", new.spec],
                          env=env, capture_output=True, text=True, timeout=120)


def test_reseal_killed_after_each_durable_step(shim, token, tmp_path):
    env = token["env"]
    for label in ("root", "root2"):
        assert pkcs11_envelope(token, "key", "create", label).returncode == 0
    pin = token["pin"]

    def token_root(label):
        uri = f"pkcs11:token=kms;object={label}?module-path={SOFTHSM_MODULE}&pin-source=file:{pin}"
        return Root(uri, "root.pkcs11", ["--root-key", uri])

    def passphrase_root(name, text):
        path = tmp_path / name
        path.write_text(text + "\n")
        return Root(f"passphrase-file:{path}", "root.passphrase", ["--root-passphrase-file", str(path)])

    file_root = Root("file", "root.key", [])
    first, second = passphrase_root("pass-a", "first operator passphrase"), passphrase_root("pass-b", "second one, longer")
    moves = [
        ("kms", file_root, token_root("root")),
        ("key", token_root("root"), token_root("root2")),
        ("kms", token_root("root2"), first),
        ("key", first, second),
        ("key", second, file_root),
    ]

    # The store: two keys (one rotated), ciphertexts under every version.
    base = tmp_path / "base"
    base.mkdir(mode=0o700)
    data = str(base / "data")
    served, err = _serve(str(base), data, file_root, env)
    assert served, err
    p, port = served
    ciphertexts = []
    try:
        kms = _client(port)
        for n in range(2):
            key_id = kms.create_key()["KeyMetadata"]["KeyId"]
            ciphertexts.append((kms.encrypt(KeyId=key_id, Plaintext=b"v1 of %d" % n)["CiphertextBlob"], b"v1 of %d" % n))
            kms.rotate_key_on_demand(KeyId=key_id)
            ciphertexts.append((kms.encrypt(KeyId=key_id, Plaintext=b"v2 of %d" % n)["CiphertextBlob"], b"v2 of %d" % n))
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
    assert _forms(data) == ["root.key"]

    report = []
    for i, (command, old, new) in enumerate(moves):
        steps = []
        n = 0
        while True:
            n += 1
            work = tmp_path / f"move{i}-step{n}"
            shutil.copytree(base, work, symlinks=True)
            wdata = str(work / "data")
            log = str(work / "steps.log")
            if os.path.exists(log):
                os.unlink(log)
            crash_env = dict(env, LD_PRELOAD=shim, CRASH_DIR=wdata, CRASH_AFTER=str(n), CRASH_LOG=log)
            r = _reseal(command, wdata, old, new, crash_env)
            lines = open(log).read().splitlines() if os.path.exists(log) else []
            if r.returncode == 0:
                # Past the last step: this run was not killed and took the steps counted before.
                assert len(lines) == n - 1, (i, lines)
                assert _forms(wdata) == [new.form] and not _temporaries(wdata)
                assert _opens_and_decrypts(str(work), wdata, new, env, ciphertexts)
                base = work
                break
            assert r.returncode == -signal.SIGKILL, (i, n, r.returncode, r.stderr)
            assert len(lines) == n, (i, n, lines)
            steps.append(lines[-1].split(" ", 1)[1].replace(wdata, "DIR"))
            opened = [root for root in (old, new) if _opens_and_decrypts(str(work), wdata, root, env, ciphertexts)]
            assert opened, f"move {i} ({old} → {new}) killed after {lines[-1]}: opens under neither root"
            again = _reseal(command, wdata, old, new, env)
            assert again.returncode == 0, (i, n, lines[-1], again.stderr)
            assert _forms(wdata) == [new.form], (i, n, lines[-1], _forms(wdata))
            assert not _temporaries(wdata), (i, n, lines[-1], os.listdir(wdata))
            listed = subprocess.run([envelope_bin(), "key", "--data-dir", wdata, "--root-key", new.spec, "list"],
                                    env=env, capture_output=True, text=True, timeout=60)
            assert listed.returncode == 0, listed.stderr
            shutil.rmtree(work)
        report.append((command, old, new, steps))
        # The steps that matter were crash points: the new form placed, and (between two forms)
        # the old one removed.
        placed = "rename" if old.form == new.form else "link"
        assert f"{placed} DIR/{new.form}" in steps, (i, steps)
        if old.form != new.form:
            assert f"unlink DIR/{old.form}" in steps, (i, steps)
        assert sum(s.startswith("fsync") for s in steps) >= 2, (i, steps)
    for command, old, new, steps in report:
        print(f"{command} reseal {old} → {new}: killed after each of {len(steps)} steps: {steps}")
