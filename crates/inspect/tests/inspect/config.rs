//! EncryptionConfiguration: a full valid file, defaults, and the rejections of spec §8.1.

use std::time::Duration;

use envelope_inspect::{EncryptionConfig, Error, KmsApiVersion, Provider, ProviderKind, StaticProvider};

const FULL: &str = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
      - configmaps
    providers:
      - kms:
          apiVersion: v2
          name: our-kms
          endpoint: unix:///var/run/kms/our-kms.sock
          timeout: 3s
      - kms:
          name: "old:v1"
          endpoint: unix:///@abstract-kms
          cachesize: -1
          timeout: 1m30s
      - aesgcm:
          keys:
            - name: k128
              secret: AAECAwQFBgcICQoLDA0ODw==
            - name: k192
              secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYX
      - aescbc:
          keys:
            - name: key1
              secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
      - secretbox:
          keys:
            - name: sb
              secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
      - identity: {}
  - resources: ["*.apps"]
    providers:
      - kms:
          name: v1-only
          endpoint: unix:///run/v1.sock
  - resources: ["*.*"]
    providers:
      - aescbc:
          keys:
            - name: key1
              secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
      - identity: {}
"#;

fn header(body: &str) -> String {
    format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n{body}")
}

fn err(yaml: &str) -> String {
    match EncryptionConfig::from_yaml(yaml) {
        Err(Error::Config(m)) => m,
        Err(other) => panic!("unexpected error kind: {other}"),
        Ok(_) => panic!("accepted:\n{yaml}"),
    }
}

fn one_provider(provider: &str) -> String {
    header(&format!("resources:\n  - resources: [secrets]\n    providers:\n      - {provider}\n"))
}

#[test]
fn full_file() {
    let c = EncryptionConfig::from_yaml(FULL).unwrap();
    assert_eq!(c.rules().len(), 3);
    assert_eq!(c.rules()[0].resources, ["secrets", "configmaps"]);
    assert!(matches!(c.rules()[0].providers[5], Provider::Identity));

    let kms = c.kms_providers();
    assert_eq!(kms.len(), 3);
    assert_eq!(kms[0].name, "our-kms");
    assert_eq!(kms[0].api_version, KmsApiVersion::V2);
    assert_eq!(kms[0].cache_size, None);
    assert_eq!(kms[0].timeout, Duration::from_secs(3));
    assert_eq!(kms[0].socket_path(), "/var/run/kms/our-kms.sock");
    assert_eq!(kms[1].api_version, KmsApiVersion::V1);
    assert_eq!(kms[1].cache_size, Some(-1));
    assert_eq!(kms[1].timeout, Duration::from_secs(90));
    assert_eq!(kms[1].socket_path(), "@abstract-kms");
    assert_eq!(kms[2].cache_size, Some(1000), "v1 default cache size");
    assert_eq!(kms[2].timeout, Duration::from_secs(3), "default timeout");
    assert_eq!(c.kms_provider(ProviderKind::KmsV1, "old:v1").map(|k| k.name.as_str()), Some("old:v1"));
    assert!(c.kms_provider(ProviderKind::KmsV2, "old:v1").is_none());

    let gcm = c.static_keys(StaticProvider::AesGcm);
    assert_eq!(
        gcm.iter().map(|k| (k.name.as_str(), k.secret().len())).collect::<Vec<_>>(),
        [("k128", 16), ("k192", 24)]
    );
    // key1 appears twice with the same secret: returned once.
    let cbc = c.static_keys(StaticProvider::AesCbc);
    assert_eq!(cbc.len(), 1);
    assert_eq!(cbc[0].secret(), (0u8..32).collect::<Vec<_>>());
    assert_eq!(c.static_keys_named(StaticProvider::Secretbox, "sb").len(), 1);
    assert!(c.static_keys_named(StaticProvider::Secretbox, "nope").is_empty());
    assert_eq!(c.names(ProviderKind::KmsV1), ["old:v1", "v1-only"]);
    assert_eq!(c.names(ProviderKind::AesGcm), ["k128", "k192"]);
    assert!(c.names(ProviderKind::Identity).is_empty());

    // Debug never shows secrets.
    let dbg = format!("{:?}", c);
    assert!(dbg.contains("<32 bytes>") && !dbg.contains("[0, 1, 2"), "{dbg}");
}

#[test]
fn load_from_file() {
    let dir = std::env::temp_dir().join(format!("envelope-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("enc.yaml");
    std::fs::write(&path, FULL).unwrap();
    assert_eq!(EncryptionConfig::load(&path).unwrap().rules().len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(EncryptionConfig::load(&path), Err(Error::Io { .. })));
}

#[test]
fn rejects_bad_files() {
    const SECRET: &str = "c2VjcmV0LXZhbHVlLXRoYXQtaXMtbm90LTMyLWJ5dGVz";
    let cases: Vec<(String, &str)> = vec![
        ("not: [yaml".into(), ""),
        (FULL.replace("kind: EncryptionConfiguration", "kind: EncryptionConfig"), "kind"),
        (FULL.replace("apiserver.config.k8s.io/v1", "v1"), "apiVersion"),
        (header("resources: []\n"), "at least one"),
        (header("resources:\n  - resources: [secrets]\n    providers: []\n"), "at least one provider"),
        (header("resources:\n  - resources: []\n    providers: [{identity: {}}]\n"), "at least one resource"),
        (
            header("resources:\n  - resources: [secrets]\n    providers: [{identity: {}}]\n    extra: 1\n"),
            "unknown field",
        ),
        (
            header(
                "resources:\n  - resources: [secrets]\n    resources: [configmaps]\n    providers: [{identity: {}}]\n",
            ),
            "duplicate",
        ),
        (one_provider("{identity: {}, aescbc: {keys: [{name: a, secret: AAECAwQFBgcICQoLDA0ODw==}]}}"), "exactly one"),
        (one_provider("{}"), "exactly one"),
        (one_provider("{identity: {x: 1}}"), "unknown field"),
        (one_provider("{aescbc: {keys: []}}"), "at least one key"),
        (one_provider("{aescbc: {keys: [{name: '', secret: AAECAwQFBgcICQoLDA0ODw==}]}}"), "name"),
        (one_provider(&format!("{{aescbc: {{keys: [{{name: a, secret: {SECRET}}}]}}}}")), "bytes"),
        (one_provider("{aescbc: {keys: [{name: a, secret: 'not base64!'}]}}"), "base64"),
        (one_provider("{secretbox: {keys: [{name: a, secret: AAECAwQFBgcICQoLDA0ODw==}]}}"), "needs 32"),
        (one_provider("{kms: {apiVersion: v3, name: a, endpoint: 'unix:///a'}}"), "v1 or v2"),
        (one_provider("{kms: {apiVersion: v2, name: 'a:b', endpoint: 'unix:///a'}}"), "':'"),
        (one_provider("{kms: {apiVersion: v2, name: a, endpoint: 'unix:///a', cachesize: 5}}"), "cachesize"),
        (one_provider("{kms: {name: a, endpoint: 'unix:///a', cachesize: 0}}"), "cachesize"),
        (one_provider("{kms: {name: a, endpoint: '/a.sock'}}"), "unix://"),
        (one_provider("{kms: {name: a}}"), "endpoint"),
        (one_provider("{kms: {name: '', endpoint: 'unix:///a'}}"), "name"),
        (one_provider("{kms: {name: a, endpoint: 'unix:///a', timeout: 0s}}"), "timeout"),
        (one_provider("{kms: {name: a, endpoint: 'unix:///a', timeout: 3}}"), "timeout"),
        (
            header(
                "resources:\n  - resources: [secrets]\n    providers: [{kms: {apiVersion: v2, name: a, endpoint: 'unix:///a'}}]\n  - resources: [configmaps]\n    providers: [{kms: {apiVersion: v2, name: a, endpoint: 'unix:///b'}}]\n",
            ),
            "more than once",
        ),
        (header("resources:\n  - resources: ['*']\n    providers: [{identity: {}}]\n"), "not allowed"),
        (header("resources:\n  - resources: ['secrets.*']\n    providers: [{identity: {}}]\n"), "not allowed"),
        (header("resources:\n  - resources: [Secrets]\n    providers: [{identity: {}}]\n"), "lowercase"),
        (header("resources:\n  - resources: [secrets, secrets]\n    providers: [{identity: {}}]\n"), "twice"),
        (header("resources:\n  - resources: ['*.*', secrets]\n    providers: [{identity: {}}]\n"), "overlaps"),
        (
            header(
                "resources:\n  - resources: ['*.']\n    providers: [{identity: {}}]\n  - resources: [secrets]\n    providers: [{identity: {}}]\n",
            ),
            "earlier rule",
        ),
        (header("resources:\n  - resources: [ingresses.extensions]\n    providers: [{identity: {}}]\n"), "extensions"),
        (header("resources:\n  - resources: [events.events.k8s.io]\n    providers: [{identity: {}}]\n"), "events"),
        (
            header("resources:\n  - resources: [serviceipallocations]\n    providers: [{identity: {}}]\n"),
            "cannot be encrypted",
        ),
        (
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: []\n---\nx: 1\n".into(),
            "",
        ),
    ];
    for (yaml, needle) in cases {
        let m = err(&yaml);
        assert!(m.contains(needle), "{m:?} lacks {needle:?} for\n{yaml}");
        assert!(!m.contains(SECRET), "secret leaked: {m}");
    }
}
