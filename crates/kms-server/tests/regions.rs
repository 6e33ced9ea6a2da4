//! A server with several regions, in process: each region's keys and aliases are its own, the
//! seed file's `region` picks where a key is made, and regions are validated when added. (The
//! routing by SigV4 scope, restarts and the CLI: `tests/python/test_kms_regions.py`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use std::sync::Arc;

use envelope_keystore::KeyStore;
use envelope_kms_server::{Caller, Config, Credential, CredentialStore, KmsError, Operation, Server, parse_request};
use serde_json::{Value, json};

const ACCOUNT: &str = "111122223333";

fn store() -> (Arc<KeyStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Arc::new(KeyStore::open(&dir.path().join("s")).unwrap()), dir)
}

fn call(server: &Server, op: Operation, body: Value) -> Result<Value, KmsError> {
    let req = parse_request(op, &serde_json::to_vec(&body).unwrap())?;
    let reply = server.execute(req, &Caller::account_root(ACCOUNT)).result?;
    Ok(serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
}

fn server() -> (Server, Vec<tempfile::TempDir>) {
    let (home, d1) = store();
    let (west, d2) = store();
    let creds = CredentialStore::new(vec![Credential::new(
        "AKIDREGIONS000000001",
        zeroize::Zeroizing::new("secret".to_string()),
        None,
        format!("arn:aws:iam::{ACCOUNT}:user/admin"),
    )])
    .unwrap();
    let mut s = Server::new(home, creds, Config::new("us-east-1", ACCOUNT)).unwrap();
    s.add_region("us-west-2", west).unwrap();
    (s, vec![d1, d2])
}

#[test]
fn each_region_answers_from_its_own_store_with_its_own_arns() {
    let (home, _dirs) = server();
    let west = home.other_region("us-west-2").unwrap().clone();
    assert_eq!(home.regions().collect::<Vec<_>>(), ["us-east-1", "us-west-2"]);
    assert!(home.other_region("us-east-1").is_none(), "the server's own region is not an 'other' one");
    let made = call(&west, Operation::CreateKey, json!({})).unwrap();
    let id = made["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    assert_eq!(made["KeyMetadata"]["Arn"], format!("arn:aws:kms:us-west-2:{ACCOUNT}:key/{id}"));
    assert!(matches!(call(&home, Operation::DescribeKey, json!({"KeyId": id})), Err(KmsError::NotFound(_))));
    let arn = format!("arn:aws:kms:us-west-2:{ACCOUNT}:key/{id}");
    match call(&home, Operation::DescribeKey, json!({"KeyId": arn})) {
        Err(KmsError::NotFound(m)) => assert_eq!(m, "Invalid arn us-west-2"),
        other => panic!("{other:?}"),
    }
    assert_eq!(call(&west, Operation::DescribeKey, json!({"KeyId": arn})).unwrap()["KeyMetadata"]["KeyId"], id);
    assert_eq!(call(&home, Operation::ListKeys, json!({})).unwrap()["Keys"], json!([]));
    // The stores are the regions' own: nothing of the west is in the home store.
    assert!(home.store().list().unwrap().is_empty());
    assert_eq!(west.store().list().unwrap().len(), 1);
}

#[test]
fn the_seed_file_makes_each_key_in_the_region_it_names() {
    let (home, _dirs) = server();
    let west = home.other_region("us-west-2").unwrap().clone();
    let seed = "keys:\n  - alias: alias/k\n    description: home\n  - alias: alias/k\n    description: west\n    region: us-west-2\n";
    let report = envelope_kms_server::seed::apply(&home, seed).unwrap();
    assert_eq!(report.created, ["alias/k", "alias/k (us-west-2)"]);
    let d = |s: &Server| call(s, Operation::DescribeKey, json!({"KeyId": "alias/k"})).unwrap()["KeyMetadata"].clone();
    assert_eq!((d(&home)["Description"].clone(), d(&west)["Description"].clone()), (json!("home"), json!("west")));
    assert_ne!(d(&home)["KeyId"], d(&west)["KeyId"]);
    // Applied again, both exist and stay as they are.
    let again = envelope_kms_server::seed::apply(&home, seed).unwrap();
    assert!(again.created.is_empty());
    assert_eq!(again.existing, ["alias/k", "alias/k (us-west-2)"]);
    // A region the server does not serve stops the seed before it creates anything there.
    let e = envelope_kms_server::seed::apply(&home, "keys:\n  - alias: alias/x\n    region: eu-west-1\n").unwrap_err();
    assert!(matches!(&e, KmsError::Config(m) if m.contains("eu-west-1")), "{e:?}");
}

#[test]
fn a_region_is_validated_and_added_once() {
    let (mut home, _dirs) = server();
    let (s, _d) = store();
    assert!(matches!(home.add_region("us-west-2", s.clone()), Err(KmsError::Config(_))));
    assert!(matches!(home.add_region("us-east-1", s.clone()), Err(KmsError::Config(_))));
    assert!(matches!(home.add_region("Mars", s.clone()), Err(KmsError::Config(_))));
    home.add_region("eu-central-1", s).unwrap();
    assert_eq!(home.regions().count(), 3);
}
