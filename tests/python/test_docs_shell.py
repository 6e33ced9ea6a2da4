"""Every shell block of README.md and docs/*.md runs, or says in the Markdown why it does not.

Each ```sh / ```bash / ```shell / ```console block (fenced at any indentation; for ```console only
the `$ ` lines) is one test, named after its file and line. A file's blocks run in document order
in one bash session (`set -euo pipefail`: the first failing command fails the block; variables and
the working directory carry over from block to block, as for a reader pasting a walkthrough into
one terminal), in a scratch environment:

- a temp directory holding the working directory and a fake filesystem root `$TMP/root`: these
  absolute paths in a block (and in the markers below) are rewritten to `$TMP/root<path>` before
  it runs: /var/lib/envelope, /run/envelope, /etc/envelope, /etc/kubernetes, /backup,
  /secure-backup, /secure, /srv, /root, /tmp. /backup, /secure-backup, /secure, /srv, /root,
  /tmp, /etc, /var/lib and /run exist (as on a real machine); the rest is created by the commands;
- PATH: `envelope` (target/debug/envelope, or $ENVELOPE_BIN) and the venv's `aws`, then /usr/bin
  and /bin; HOME is `$TMP/root/root` (the tests run as root, like the operator the docs address);
  every outer AWS_* and ENVELOPE_* variable is removed;
- the built-in defaults that point outside the scratch root are moved into it by environment
  variables the commands honour: ENVELOPE_DATA_DIR, ENVELOPE_SOCKET, ENVELOPE_KMS_DATA_DIR
  (defaults of root), and free ports for the documented ones: ENVELOPE_HTTP_ADDR (8423),
  ENVELOPE_KMS_LISTEN (4599), ENVELOPE_KMS_HTTP_ADDR (4598); `127.0.0.1:<documented port>` in a
  block is rewritten to the free port.

A block that cannot run here opts out, reviewed, by an HTML comment on the line(s) right before
its fence (blank lines between are allowed; one directive per comment):

    <!-- docs-test: skip (REASON) -->          not run; pytest -ra lists REASON
    <!-- docs-test: background (wait for X, Y) -->
        a server the doc starts in the foreground: started in the background (with the session's
        exported variables and directory), ready when every X is there: a path (its socket or
        file exists), HOST:PORT (accepts TCP connections) or "TEXT" (in its output; the output
        file's path is in $DOCS_TEST_BACKGROUND_OUTPUT); stopped with SIGTERM at the end of the
        file
    <!-- docs-test: before: COMMAND -->         COMMAND runs in the session first (what the
                                               reader has done by then, e.g. a file the doc
                                               assumes); not shown when the Markdown is rendered
    <!-- docs-test: stop background -->         stop the file's background servers first (the
                                               doc says to stop the server)
    <!-- docs-test: fresh -->                   start over: stop the background servers, new
                                               scratch root, ports and session (an alternative
                                               to what came before, not its continuation)
    <!-- docs-test: harness (NAME) -->         only in a doc run by its own test (DOCS_RUN_BY):
                                               that test does NAME instead of the block (e.g.
                                               docs/guide.md's kube-apiserver, started by
                                               tests/python/test_guide.py through kube.py)

Shell-language blocks without a marker must run: a doc that adds one that cannot run here fails
until it is given a marker. A marker that is not followed by a shell block, or a directive this
test does not know, fails too. At the end, a table shows per file how many blocks ran and were
skipped, and why.

docs/guide.md is run by tests/python/test_guide.py instead (its blocks need a real kube-apiserver
and etcd), with this file's parser, Session and run_block.
"""

import dataclasses
import os
import pathlib
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from harness import ROOT, envelope_bin, free_port

# Docs whose blocks another test runs, in its own environment (with the same markers).
DOCS_RUN_BY = {ROOT / "docs" / "guide.md": "tests/python/test_guide.py"}
DOCS = sorted(p for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")] if p not in DOCS_RUN_BY)
SHELL_LANGS = {"sh", "bash", "shell", "console"}
MAPPED_ROOTS = ["/var/lib/envelope", "/run/envelope", "/etc/envelope", "/etc/kubernetes", "/backup",
                "/secure-backup", "/secure", "/srv", "/root", "/tmp"]
EXISTING_DIRS = ["/backup", "/secure-backup", "/secure", "/srv", "/root", "/tmp", "/etc", "/var/lib", "/run"]
PATH_RE = re.compile(r"(?<![\w./:~-])(" + "|".join(re.escape(p) for p in MAPPED_ROOTS) + r")(?=[/\s\"'`;:)|&>]|$)")
PORTS = {"plugin_http": 8423, "kms": 4599, "kms_http": 4598}
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
BLOCK_TIMEOUT = 60


@dataclasses.dataclass
class Block:
    path: pathlib.Path
    line: int
    text: str
    skip: str = None
    background: list = None
    before: list = dataclasses.field(default_factory=list)
    stop_background: bool = False
    fresh: bool = False
    harness: str = None

    @property
    def where(self):
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse(path):
    """The shell blocks of `path` with their markers, and the marker mistakes found."""
    lines = path.read_text().split("\n")
    blocks, errors, pending, i = [], [], [], 0
    while i < len(lines):
        line = lines[i]
        m, f = MARKER.match(line), FENCE.match(line)
        if m:
            pending.append((i + 1, m.group("body")))
        elif "docs-test" in line:
            errors.append(f"{path.relative_to(ROOT)}:{i + 1}: not a docs-test marker: {line.strip()!r}")
        elif f:
            indent, lang = f.group("indent"), f.group("lang")
            j = i + 1
            while j < len(lines) and lines[j].rstrip() != indent + "```" and lines[j].strip() != "```":
                j += 1
            body = [l[len(indent):] if l.startswith(indent) else l.lstrip() for l in lines[i + 1:j]]
            if lang in SHELL_LANGS:
                if lang == "console":
                    body = [l[2:] for l in body if l.startswith("$ ")]
                block = Block(path, i + 1, "\n".join(body) + "\n")
                for mline, directive in pending:
                    err = apply_directive(block, directive)
                    if err:
                        errors.append(f"{path.relative_to(ROOT)}:{mline}: {err}")
                blocks.append(block)
            elif pending:
                errors.append(f"{path.relative_to(ROOT)}:{pending[0][0]}: docs-test marker before a ```{lang} block")
            pending = []
            i = j
        elif line.strip() and pending:
            errors.append(f"{path.relative_to(ROOT)}:{pending[0][0]}: docs-test marker not followed by a code block")
            pending = []
        i += 1
    if pending:
        errors.append(f"{path.relative_to(ROOT)}:{pending[0][0]}: docs-test marker not followed by a code block")
    return blocks, errors


def apply_directive(block, directive):
    if m := re.fullmatch(r"skip \((.+)\)", directive):
        block.skip = m.group(1)
    elif m := re.fullmatch(r"background \(wait for (.+)\)", directive):
        block.background = [t.strip() for t in m.group(1).split(",")]
    elif m := re.fullmatch(r"before: (.+)", directive):
        block.before.append(m.group(1))
    elif directive == "stop background":
        block.stop_background = True
    elif directive == "fresh":
        block.fresh = True
    elif m := re.fullmatch(r"harness \((.+)\)", directive):
        block.harness = m.group(1)
    else:
        return f"unknown docs-test directive {directive!r}"
    return None


PARSED = {p: parse(p) for p in DOCS}
ALL_BLOCKS = [b for p in DOCS for b in PARSED[p][0]]


class Session:
    """One scratch environment and bash session for the blocks of one file."""

    block_timeout = BLOCK_TIMEOUT

    def __init__(self):
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="envelope-docs-"))
        self.root = self.tmp / "root"
        self.work = self.tmp / "work"
        self.logs = self.tmp / "logs"
        for d in [self.work, self.logs, self.tmp / "bin", *(self.root / d.lstrip("/") for d in EXISTING_DIRS)]:
            d.mkdir(parents=True, exist_ok=True)
        (self.tmp / "bin" / "envelope").symlink_to(envelope_bin())
        (self.tmp / "bin" / "aws").symlink_to(ROOT / ".venv" / "bin" / "aws")
        self.ports = {name: free_port() for name in PORTS}
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "ENVELOPE_", "KUBECONFIG", "ETCDCTL_"))}
        env.update({
            "PATH": f"{self.tmp / 'bin'}:/usr/bin:/bin",
            "HOME": str(self.root / "root"),
            "ENVELOPE_DATA_DIR": self.map("/var/lib/envelope"),
            "ENVELOPE_SOCKET": self.map("/run/envelope/kms.sock"),
            "ENVELOPE_KMS_DATA_DIR": self.map("/var/lib/envelope/kms"),
            "ENVELOPE_HTTP_ADDR": f"127.0.0.1:{self.ports['plugin_http']}",
            "ENVELOPE_KMS_LISTEN": f"127.0.0.1:{self.ports['kms']}",
            "ENVELOPE_KMS_HTTP_ADDR": f"127.0.0.1:{self.ports['kms_http']}",
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        self.shell = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=self.work, env=env, text=True, start_new_session=True)
        self.background = []
        self.counter = 0
        self.failed = None
        self.send("set -euo pipefail; trap 'echo \"exit $? at line $LINENO: $BASH_COMMAND\" > \"$DOCS_TEST_ERR\"' ERR")

    def map(self, text):
        text = PATH_RE.sub(lambda m: str(self.root) + m.group(1), text)
        for name, port in PORTS.items():
            text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{self.ports[name]}")
        return text

    def send(self, command):
        self.shell.stdin.write(command + "\n")
        self.shell.stdin.flush()

    def run(self, text, what):
        """Runs `text` in the session; returns None, or why it failed with its output."""
        self.counter += 1
        script = self.logs / f"{self.counter}.sh"
        out = self.logs / f"{self.counter}.out"
        err = self.logs / f"{self.counter}.err"
        script.write_text(self.map(text))
        self.send(f"DOCS_TEST_ERR={err}; source {script} > {out} 2>&1 < /dev/null; echo __done__")
        deadline = time.time() + self.block_timeout
        line = None
        while line is None and time.time() < deadline:
            if select.select([self.shell.stdout], [], [], 0.2)[0]:
                line = self.shell.stdout.readline()
        if line is not None and line.strip() == "__done__":
            return None
        if line is None:
            why = f"no end within {self.block_timeout} s"
            os.killpg(self.shell.pid, signal.SIGKILL)
        else:
            why = err.read_text().strip() if err.exists() else "the shell ended"
        output = out.read_text() if out.exists() else ""
        return f"{what} failed: {why}\n--- script (paths and ports mapped)\n{script.read_text()}--- output\n{output}"

    def start_background(self, block):
        self.counter += 1
        script = self.logs / f"{self.counter}.sh"
        log = self.logs / f"{self.counter}.log"
        script.write_text(self.map(block.text))
        envfile = self.logs / f"{self.counter}.env"
        self.send(f"env -0 > {envfile}; pwd > {envfile}.pwd; echo __done__")
        assert self.shell.stdout.readline().strip() == "__done__"
        env = dict(kv.split("=", 1) for kv in envfile.read_text().split("\0") if "=" in kv)
        cwd = (envfile.parent / f"{envfile.name}.pwd").read_text().strip()
        p = subprocess.Popen(["bash", "-euo", "pipefail", str(script)], cwd=cwd, env=env,
                             stdin=subprocess.DEVNULL, stdout=log.open("w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.background.append(p)
        self.send(f"DOCS_TEST_BACKGROUND_OUTPUT={log}")
        targets = [self.map(t) for t in block.background]
        deadline = time.time() + 30
        while not all(self._ready(t, log) for t in targets):
            if p.poll() is not None or time.time() > deadline:
                state = f"exited with {p.returncode}" if p.poll() is not None else "timed out"
                return (f"background block {state} before {', '.join(block.background)} was ready\n"
                        f"--- script\n{script.read_text()}--- output\n{log.read_text()}")
            time.sleep(0.05)
        return None

    @staticmethod
    def _ready(target, log):
        if target.startswith('"') and target.endswith('"'):
            return target[1:-1] in log.read_text()
        if target.startswith("/"):
            return os.path.exists(target)
        host, port = target.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop_background(self):
        for p in self.background:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.background = []

    def close(self):
        self.stop_background()
        if self.shell.poll() is None:
            self.shell.stdin.close()
            try:
                self.shell.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.shell.pid, signal.SIGKILL)
                self.shell.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_block(session, block):
    """Runs `block` in `session` as its markers say (stop background, before:, background);
    returns None, or why it failed. Skips, `fresh` and `harness` are the caller's."""
    if block.stop_background:
        session.stop_background()
    for command in block.before:
        problem = session.run(command + "\n", f"docs-test before: {command!r}")
        if problem:
            return problem
    if block.background is not None:
        return session.start_background(block)
    return session.run(block.text, "the block")


@pytest.fixture(scope="module")
def sessions(request):
    """The open session of each file; all closed at the end, with the per-file table printed."""
    open_sessions = {}
    yield open_sessions
    for s in open_sessions.values():
        s.close()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture:
        with capture.global_and_fixture_disabled():
            _write_table(reporter)


def _write_table(reporter):
    reporter.write_sep("-", "docs shell blocks: run / skipped per file")
    for path in DOCS:
        blocks = PARSED[path][0]
        skipped = [b for b in blocks if b.skip]
        reporter.write_line(f"{str(path.relative_to(ROOT)):<24} run {len(blocks) - len(skipped):>2}"
                            f"   skipped {len(skipped):>2}")
        for b in skipped:
            reporter.write_line(f"    skipped {b.where}: {b.skip}")


def test_markers_are_well_formed():
    errors = [e for p in DOCS for e in PARSED[p][1]]
    assert not errors, "\n".join(errors)
    assert ALL_BLOCKS, "no shell blocks found"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.where)
def test_shell_block(block, sessions):
    blocks = PARSED[block.path][0]
    last = block is blocks[-1]
    session = sessions.get(block.path)
    if block.fresh and session:
        sessions.pop(block.path).close()
        session = None
    try:
        if block.skip:
            pytest.skip(f"{block.where}: {block.skip}")
        if session and session.failed:
            pytest.fail(f"not run: the earlier block {session.failed} of this file failed")
        if block.harness:
            pytest.fail(f"{block.where}: a harness block ({block.harness}) in a doc no test of its own runs "
                        f"(DOCS_RUN_BY)", pytrace=False)
        if session is None:
            session = sessions[block.path] = Session()
        problem = run_block(session, block)
        if problem:
            session.failed = block.where
            pytest.fail(f"{block.where}: {problem}", pytrace=False)
    finally:
        if last and block.path in sessions:
            sessions.pop(block.path).close()
