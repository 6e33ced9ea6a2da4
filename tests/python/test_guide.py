"""docs/guide.md, run: its shell blocks in document order, as a reader pastes them, against a real
etcd and kube-apiserver (tests/python/kube.py; binaries from scripts/kube-peers, KUBE_PEERS_BIN).

The blocks run as test_docs_shell.py runs every other doc (its parser, markers, scratch Session
and run_block: one bash session, `set -euo pipefail`, `background` blocks for the key server and
the plugin, paths and documented ports mapped into a temp dir), with three additions:

- `kubectl` and `etcdctl` (the built peers) are on the PATH, and etcd — the control plane's etcd
  the guide assumes on 127.0.0.1:2379 — runs from the start (kube.Etcd; `127.0.0.1:2379` in a
  block is rewritten to its port);
- the block marked `<!-- docs-test: harness (kube-apiserver) -->` is done by kube.ApiServer: it is
  started with the EncryptionConfiguration file the block's `--encryption-provider-config=` names
  (the one the guide saved from the plugin's output), and KUBECONFIG is exported in the session
  for the blocks after it (a reader's kubectl is configured already);
- at the end, what the guide claims is checked from outside: the Secret is in etcd as
  `k8s:enc:kms:v2:envelope:…` without its plaintext, under the rotated key_id (another than the
  one it was first written under), reencrypt rewrote it, and it reads back.

Blocks with `skip (reason)` (a real node's systemctl and install, the embedded alternative to the
plugin the guide runs) are reported as skipped with their reason.
"""

import base64
import json
import os
import pathlib
import re
import subprocess

import pytest

from harness import ROOT, envelope_bin
from kube import ApiServer, Etcd, kms_v2, peers_bin
from test_docs_shell import Session, parse, run_block

GUIDE = ROOT / "docs" / "guide.md"
BLOCKS, ERRORS = parse(GUIDE)
NAMESPACE, NAME = "guide", "db-password"
ETCD_KEY = f"/registry/secrets/{NAMESPACE}/{NAME}"
PASSWORD = b"correct horse battery staple"


class GuideSession(Session):
    """A docs Session with etcd running, kube-apiserver ready to start, kubectl and etcdctl."""

    # A block may wait for kube-apiserver: `envelope reencrypt` retries until it has seen the
    # rotated key_id (it polls the plugin's Status about once a minute).
    block_timeout = 300

    def __init__(self):
        super().__init__()
        try:
            peers = peers_bin()
            for tool in ("kubectl", "etcdctl"):
                (self.tmp / "bin" / tool).symlink_to(os.path.join(peers, tool))
            cluster = self.tmp / "cluster"
            cluster.mkdir()
            self.etcd = Etcd(str(cluster))
            self.api = ApiServer(str(cluster), self.etcd)
        except BaseException:
            self.close()
            raise

    def map(self, text):
        text = super().map(text)
        etcd = getattr(self, "etcd", None)
        return text.replace("127.0.0.1:2379", f"127.0.0.1:{etcd.port}") if etcd else text

    def expand(self, word):
        """`word` (e.g. "$ENVELOPE_DIR/kms.sock") as the session's shell expands it."""
        self.counter += 1
        out = self.logs / f"{self.counter}.expand"
        self.send(f"printf '%s' {self.map(word)} > {out}; echo __done__")
        assert self.shell.stdout.readline().strip() == "__done__"
        return out.read_text()

    def harness(self, block):
        """Does what a `harness (NAME)` block shows; returns None or why it failed."""
        if block.harness != "kube-apiserver":
            return f"unknown harness {block.harness!r}"
        m = re.search(r"--encryption-provider-config=(\S+)", block.text)
        if not m:
            return "the kube-apiserver block names no --encryption-provider-config="
        path = pathlib.Path(self.expand(m.group(1)))
        try:
            self.api.start(path.read_text())
        except (AssertionError, OSError) as e:
            return f"kube-apiserver with {path}: {e}"
        self.send(f"export KUBECONFIG={self.api.kubeconfig}")
        return None

    def close(self):
        try:
            api = getattr(self, "api", None)
            if api is not None and api.proc is not None and api.proc.poll() is None:
                api.stop()
        finally:
            self.stop_background()
            if getattr(self, "etcd", None) is not None:
                self.etcd.stop()
            super().close()


@pytest.fixture(scope="module")
def guide():
    """The guide's session (created by its first block), the first failure, and what was seen."""
    state = {"session": None, "failed": None, "outputs": {}, "first_key_id": None}
    yield state
    if state["session"] is not None:
        state["session"].close()


def test_guide_markers_are_well_formed():
    assert not ERRORS, "\n".join(ERRORS)
    assert [b.harness for b in BLOCKS if b.harness] == ["kube-apiserver"]
    assert sum(1 for b in BLOCKS if not b.skip) >= 15, "the guide's core path lost its blocks"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_guide_block(block, guide):
    if block.skip:
        pytest.skip(f"{block.where}: {block.skip}")
    if guide["failed"]:
        pytest.fail(f"not run: the earlier block {guide['failed']} failed")
    try:
        if guide["session"] is None:
            guide["session"] = GuideSession()
    except BaseException:
        guide["failed"] = "(setting up etcd and kube-apiserver)"
        raise
    s = guide["session"]
    problem = s.harness(block) if block.harness else run_block(s, block)
    if problem:
        guide["failed"] = block.where
        pytest.fail(f"{block.where}: {problem}", pytrace=False)
    guide["outputs"][block.line] = s.logs / f"{s.counter}.out"
    if "kubectl create secret" in block.text:
        raw = s.etcd.get(ETCD_KEY)
        assert raw is not None, f"{ETCD_KEY} not in etcd after {block.where}"
        guide["first_key_id"] = kms_v2(raw)[1]


def output_of(guide, command):
    """The output of the one run block that contains `command`."""
    lines = [b.line for b in BLOCKS if command in b.text and not b.skip and b.background is None]
    assert len(lines) == 1, f"{command!r} in {len(lines)} blocks"
    return guide["outputs"][lines[0]].read_text()


def test_what_the_guide_claims(guide):
    if guide["failed"] or guide["session"] is None:
        pytest.fail(f"not run: the guide's block {guide['failed']} failed")
    s = guide["session"]
    raw = s.etcd.get(ETCD_KEY)
    assert raw.startswith(b"k8s:enc:kms:v2:envelope:"), raw[:40]
    assert PASSWORD not in raw and b"correct horse" not in raw
    name, key_id = kms_v2(raw)
    assert key_id.startswith("aws-"), key_id
    assert guide["first_key_id"] and key_id != guide["first_key_id"], "the Secret is not under the rotated key_id"

    r = subprocess.run([envelope_bin(), "inspect", "--etcd", s.etcd.url, "-o", "json",
                        "--plugin-socket", s.expand('"$ENVELOPE_DIR/kms.sock"')],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [o for o in json.loads(r.stdout)["objects"] if (o["namespace"], o["name"]) == (NAMESPACE, NAME)]
    assert [(o["provider"], o["provider_name"], o["key_id"], o["stale"]) for o in rows] == \
        [("kms-v2", "envelope", key_id, False)], rows

    assert "1 rewritten" in output_of(guide, "envelope reencrypt"), output_of(guide, "envelope reencrypt")
    assert "k8s:enc:kms:v2:envelope:" in output_of(guide, "head -c 24")
    assert output_of(guide, "kubectl get --raw='/readyz/kms-providers'").strip() == "ok"
    assert base64.b64encode(PASSWORD).decode() in output_of(guide, "envelope decrypt")
    r = s.api.kubectl("get", "secret", NAME, "-n", NAMESPACE, "-o", "jsonpath={.data.password}")
    assert base64.b64decode(r.stdout) == PASSWORD
