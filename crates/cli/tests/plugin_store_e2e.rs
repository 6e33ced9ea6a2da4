//! Two plugin nodes on one shared PostgreSQL store (`--store postgres://…`, a real cluster from
//! Debian's packages): the same key on both, a rotation made through either seen by both, and
//! everything wrapped on one unwrapped on the other.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use envelope_keystore::KeyStore;
use envelope_proto::v2;
use envelope_test_support::eventually;
use envelope_test_support::postgres::Postgres;

fn enc(p: &[u8]) -> v2::EncryptRequest {
    v2::EncryptRequest { plaintext: p.to_vec(), uid: "u".into() }
}

fn dec(r: &v2::EncryptResponse) -> v2::DecryptRequest {
    v2::DecryptRequest {
        ciphertext: r.ciphertext.clone(),
        uid: "u".into(),
        key_id: r.key_id.clone(),
        annotations: r.annotations.clone(),
    }
}

/// A data directory for node `name` holding the shared root key.
fn node_dir(base: &std::path::Path, name: &str, root_key: &std::path::Path) -> std::path::PathBuf {
    let d = base.join(name).join("data");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(root_key, d.join("root.key")).unwrap();
    d
}

#[tokio::test]
async fn two_plugin_nodes_share_keys_and_rotations() {
    let pg = Postgres::start();
    let url = pg.create_database("plugins");
    let base = tempfile::tempdir().unwrap();
    // The root key, made once and copied to every node as the operations guide says.
    let first = base.path().join("first");
    drop(KeyStore::open(&first).unwrap());
    let (dir_a, dir_b) =
        (node_dir(base.path(), "a", &first.join("root.key")), node_dir(base.path(), "b", &first.join("root.key")));
    let store = ["--store", url.as_str()];
    let a =
        RunningPlugin::start_with(&base.path().join("a"), &dir_a, &format!("{}/a.sock", base.path().display()), &store)
            .await;
    let b =
        RunningPlugin::start_with(&base.path().join("b"), &dir_b, &format!("{}/b.sock", base.path().display()), &store)
            .await;
    assert!(a.stdout().contains("embedded key store postgres://"), "{}", a.stdout());
    let (mut ca, mut cb) = (a.v2().await.unwrap(), b.v2().await.unwrap());
    let before = ca.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id;
    assert_eq!(cb.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id, before, "one key for both");
    assert_eq!(pg.psql_in("plugins", "SELECT count(*) FROM keys"), "1", "b found a's key instead of making one");
    let old = ca.encrypt(enc(&[1u8; 32])).await.unwrap().into_inner();
    assert_eq!(cb.decrypt(dec(&old)).await.unwrap().into_inner().plaintext, [1u8; 32]);

    // A rotation made by the operator's `envelope key` on the shared store (as from a third node).
    let out = key_cmd(&first, &["rotate", "kubernetes", "--store", &url, "-o", "json"]);
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["versions"].as_array().unwrap().len(), 2, "{rotated}");
    for c in [&ca, &cb] {
        let c = c.clone();
        let before = before.clone();
        assert!(
            eventually(Duration::from_secs(10), || {
                let mut c = c.clone();
                let before = before.clone();
                async move { c.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id != before }
            })
            .await,
            "the rotation was not seen"
        );
    }
    let now_a = ca.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id;
    assert_eq!(cb.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id, now_a);
    let new = cb.encrypt(enc(&[2u8; 32])).await.unwrap().into_inner();
    assert_eq!(new.key_id, now_a);
    assert_eq!(rotated["kms_key_id"], now_a, "the CLI names the key_id the plugins report");
    assert_eq!(ca.decrypt(dec(&new)).await.unwrap().into_inner().plaintext, [2u8; 32]);
    assert_eq!(ca.decrypt(dec(&old)).await.unwrap().into_inner().plaintext, [1u8; 32]);
}
