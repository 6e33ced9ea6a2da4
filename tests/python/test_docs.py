"""The documentation's YAML snippets are YAML: every ```yaml block in README.md, docs/ and
deploy/ parses, and the kube-apiserver manifest snippet of the user guide has its parts where a
Pod spec needs them (a snippet pasted into a manifest must not break it)."""

import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "deploy").glob("**/*.md")])
BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", re.S | re.M)


def yaml_blocks(path):
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_snippets_parse(path):
    for line, block in yaml_blocks(path):
        try:
            list(yaml.safe_load_all(block))
        except yaml.YAMLError as e:
            pytest.fail(f"{path.relative_to(ROOT)}:{line}: not valid YAML: {e}")


def test_user_guide_manifest_snippet_is_a_pod_spec_fragment():
    blocks = [yaml.safe_load(b) for _, b in yaml_blocks(ROOT / "docs" / "user-guide.md")]
    manifest = next(b for b in blocks if isinstance(b, dict) and "spec" in b)
    container = manifest["spec"]["containers"][0]
    assert "--encryption-provider-config=/etc/kubernetes/enc/encryption-config.yaml" in container["command"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in manifest["spec"]["volumes"]}
    assert mounts == volumes == {"enc": "/etc/kubernetes/enc", "kms-socket": "/run/envelope"}


def test_yaml_files_in_deploy_parse():
    for f in sorted((ROOT / "deploy").glob("**/*.y*ml")):
        list(yaml.safe_load_all(f.read_text()))
