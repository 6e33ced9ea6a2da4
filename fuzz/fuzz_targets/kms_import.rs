//! ImportKeyMaterial (BYOK) on a key server: the import token (version byte, root-key seal,
//! key binding, algorithm, expiry, PKCS#8 key) and the wrapped material (RSA-OAEP, or
//! RSA-OAEP + AES key wrap with padding), through the public request parser and
//! `Server::execute`. None may panic.
//!
//! The first byte picks what the rest is: the wrapped material under a genuine token, the
//! token itself, or plaintext material that the target wraps (RSA-OAEP or RSA + AES-KWP) with
//! the genuine public key, so the fuzzer also reaches the unwrapped-material checks. Every
//! input that gets past the token costs an RSA private-key operation, so this target is slow.
#![no_main]

use std::sync::{Arc, LazyLock};

use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envelope_keystore::KeyStore;
use envelope_kms_server::{Caller, Config, Credential, CredentialStore, Operation, Server, parse_request};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const ACCOUNT: &str = "111122223333";

struct Setup {
    server: Server,
    caller: Caller,
    key_id: String,
    /// Token and DER public key for RSAES_OAEP_SHA_256.
    oaep: (Vec<u8>, Vec<u8>),
    /// Token and DER public key for RSA_AES_KEY_WRAP_SHA_256.
    hybrid: (Vec<u8>, Vec<u8>),
    _dir: tempfile::TempDir,
}

fn call(server: &Server, caller: &Caller, op: Operation, body: &Value) -> Option<Value> {
    let bytes = serde_json::to_vec(body).ok()?;
    let reply = server.execute(parse_request(op, &bytes).ok()?, caller).result.ok()?;
    serde_json::from_slice(&reply.body).ok()
}

fn b64_field(v: &Value, name: &str) -> Vec<u8> {
    STANDARD.decode(v[name].as_str().expect("a base64 member")).expect("valid base64")
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(KeyStore::open(dir.path()).expect("a key store"));
    let creds = CredentialStore::new(vec![Credential::new(
        "AKIDFUZZFUZZFUZZ0001",
        Zeroizing::new("fuzz-secret".to_string()),
        None,
        format!("arn:aws:iam::{ACCOUNT}:user/fuzz"),
    )])
    .expect("credentials");
    let server = Server::new(store, creds, Config::new("us-east-1", ACCOUNT)).expect("a key server");
    let caller = Caller::account_root(ACCOUNT);
    let created = call(&server, &caller, Operation::CreateKey, &json!({"Origin": "EXTERNAL"})).expect("CreateKey");
    let key_id = created["KeyMetadata"]["KeyId"].as_str().expect("a key id").to_string();
    let params = |alg: &str| {
        let p = call(
            &server,
            &caller,
            Operation::GetParametersForImport,
            &json!({"KeyId": key_id, "WrappingAlgorithm": alg, "WrappingKeySpec": "RSA_2048"}),
        )
        .expect("GetParametersForImport");
        (b64_field(&p, "ImportToken"), b64_field(&p, "PublicKey"))
    };
    let oaep = params("RSAES_OAEP_SHA_256");
    let hybrid = params("RSA_AES_KEY_WRAP_SHA_256");
    Setup { server, caller, key_id, oaep, hybrid, _dir: dir }
});

fn oaep_wrap(public_der: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
    let key = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(public_der).ok()?).ok()?;
    let mut out = vec![0u8; key.ciphertext_size()];
    let n = key.encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None).ok()?.len();
    out.truncate(n);
    Some(out)
}

fn hybrid_wrap(public_der: &[u8], material: &[u8]) -> Option<Vec<u8>> {
    let aes = [0x5a; 32];
    let mut out = oaep_wrap(public_der, &aes)?;
    let kek = AesKek::new(&AES_256, &aes).ok()?;
    let mut wrapped = vec![0u8; material.len() + 16];
    let n = kek.wrap_with_padding(material, &mut wrapped).ok()?.len();
    out.extend_from_slice(&wrapped[..n]);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let s = &*SETUP;
    let (token, material) = match mode % 5 {
        0 => (s.oaep.0.clone(), rest.to_vec()),
        1 => (s.hybrid.0.clone(), rest.to_vec()),
        2 => (rest.to_vec(), vec![0u8; 256]),
        3 => match oaep_wrap(&s.oaep.1, rest) {
            Some(m) => (s.oaep.0.clone(), m),
            None => return,
        },
        _ => match hybrid_wrap(&s.hybrid.1, rest) {
            Some(m) => (s.hybrid.0.clone(), m),
            None => return,
        },
    };
    let body = json!({
        "KeyId": s.key_id,
        "ImportToken": STANDARD.encode(&token),
        "EncryptedKeyMaterial": STANDARD.encode(&material),
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
    });
    let Ok(bytes) = serde_json::to_vec(&body) else { return };
    if let Ok(request) = parse_request(Operation::ImportKeyMaterial, &bytes) {
        let _ = s.server.execute(request, &s.caller);
    }
});
