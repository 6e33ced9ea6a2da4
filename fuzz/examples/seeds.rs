//! Writes a few valid inputs per fuzz target into `<dir>/<target>/` (default `corpus`), as the
//! starting corpus: `cargo run --example seeds [dir]` in `fuzz/`. Every seed is built with the
//! crates' own encoders (or, for SigV4, the AWS SDKs' signer), so it is accepted by the parser
//! under test and the fuzzer starts from deep inside it.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use envelope_inspect::StaticProvider;
use envelope_inspect::writer::{self, KmsV2Envelope};
use envelope_keystore::{EncryptionContext, KeyRef, KeyStore};
use envelope_kms_server::Operation;
use envelope_plugin::format::{BackendKind, seal_envelope, seal_layered};
use envelope_plugin::kek::{KEK_REF_LEN, MODE_ANNOTATION, MODE_INLINE};
use prost::Message;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    h2_authority(&dir)?;
    plugin_ciphertext(&dir)?;
    grpc_messages(&dir)?;
    etcd_value(&dir)?;
    kms_request(&dir)?;
    kms_policy(&dir)?;
    kms_sigv4(&dir)?;
    kms_import(&dir)?;
    key_export(&dir)?;
    config_yaml(&dir)?;
    Ok(())
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK literal without indexing, name from the static table.
fn literal(name_index: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![name_index, u8::try_from(value.len()).unwrap_or(0)];
    out.extend_from_slice(value);
    out
}

fn h2_authority(dir: &Path) -> Result<(), Error> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.extend(literal(0x04, b"/v2.KeyManagementService/Status")); // :path
    block.extend(literal(0x01, b"/run/envelope/kms.sock")); // :authority, a socket path
    block.extend(literal(0x0f, b"application/grpc")); // content-type (index 31 → 0x0f 0x10)
    let mut stream = frame(0x4, 0, 0, b""); // SETTINGS
    stream.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    stream.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // DATA, END_STREAM: an empty gRPC message
    for (name, split) in [("whole", 0u16), ("split", 20)] {
        let mut input = split.to_le_bytes().to_vec();
        input.extend_from_slice(&stream);
        write(dir, "h2_authority", name, &input)?;
    }
    // The header block split over HEADERS + CONTINUATION.
    let (a, b) = block.split_at(5);
    let mut cont = frame(0x4, 0, 0, b"");
    cont.extend(frame(0x1, 0, 3, a));
    cont.extend(frame(0x9, 0x4, 3, b));
    let mut input = 7u16.to_le_bytes().to_vec();
    input.extend_from_slice(&cont);
    write(dir, "h2_authority", "continuation", &input)
}

fn plugin_ciphertext(dir: &Path) -> Result<(), Error> {
    let tmp = tempfile::tempdir()?;
    let store = KeyStore::open(tmp.path())?;
    let key = store.create_key(Some("alias/seed"), "seed")?;
    let ctx = EncryptionContext::from([("envelope:api".to_string(), "v2".to_string())]);
    let e = store.encrypt(&KeyRef::parse(&key.key_id)?, b"a 32-byte data encryption key!!!", &ctx)?;
    let wrapped = seal_envelope(BackendKind::Embedded, &e.blob);
    write(dir, "plugin_ciphertext", "embedded", &wrapped)?;
    // Local KEK layer bodies (format 2): the layout, with stand-in nonce, ciphertext and tag.
    let sealed = [0x5au8; 12 + 32 + 16];
    let mut v1 = vec![MODE_INLINE];
    v1.extend_from_slice(&u16::try_from(wrapped.len())?.to_be_bytes());
    v1.extend_from_slice(&wrapped);
    v1.extend_from_slice(&sealed);
    write(dir, "plugin_ciphertext", "local-kek-v1", &seal_layered(BackendKind::Embedded, &v1))?;
    let mut v2 = vec![MODE_ANNOTATION];
    v2.extend_from_slice(&[0x11; KEK_REF_LEN]);
    v2.extend_from_slice(&sealed);
    write(dir, "plugin_ciphertext", "local-kek-v2", &seal_layered(BackendKind::Aws, &v2))?;
    write(dir, "plugin_ciphertext", "blob", &e.blob)
}

fn grpc_messages(dir: &Path) -> Result<(), Error> {
    use envelope_proto::{v1beta1, v2};
    let annotations = HashMap::from([("key.envelope.example.com".to_string(), b"v".to_vec())]);
    let decrypt = v2::DecryptRequest {
        ciphertext: vec![1, 1, 2, 3],
        uid: "3f1c".into(),
        key_id: "embedded-1".into(),
        annotations: annotations.clone(),
    };
    write(dir, "grpc_messages", "v2-decrypt", &decrypt.encode_to_vec())?;
    let encrypt = v2::EncryptRequest { plaintext: vec![7; 32], uid: "3f1d".into() };
    write(dir, "grpc_messages", "v2-encrypt", &encrypt.encode_to_vec())?;
    let v1 = v1beta1::DecryptRequest { version: "v1beta1".into(), cipher: vec![1, 1, 9] };
    write(dir, "grpc_messages", "v1-decrypt", &v1.encode_to_vec())?;
    let object = v2::EncryptedObject {
        encrypted_data: vec![9; 40],
        key_id: "embedded-1".into(),
        encrypted_dek_source: vec![1, 1, 5],
        annotations,
        encrypted_dek_source_type: 2,
    };
    write(dir, "grpc_messages", "encrypted-object", &object.encode_to_vec())?;
    write(dir, "grpc_messages", "grpc-timeout", b"2500m")
}

fn etcd_value(dir: &Path) -> Result<(), Error> {
    const KEY: &[u8] = b"/registry/secrets/default/fuzz";
    const MATERIAL: [u8; 32] = [0x42; 32];
    let meta = writer::new_object_meta("default", "fuzz", "0c5e3b5a-6f1e-4a44-a1a6-1c6a2b7f9d10", 1_767_225_600);
    let secret = writer::new_secret(meta, BTreeMap::from([("password".to_string(), b"hunter2".to_vec())]), "Opaque");
    let plain = writer::encode_secret(&secret);
    write(dir, "etcd_value", "identity", &plain)?;
    let envelope = KmsV2Envelope {
        provider_name: "p".into(),
        key_id: "embedded-1".into(),
        encrypted_dek_source: vec![1, 1, 7],
        annotations: BTreeMap::new(),
    };
    write(dir, "etcd_value", "kms-v2", &writer::kms_v2_seed(KEY, &plain, &MATERIAL, &envelope)?)?;
    write(dir, "etcd_value", "kms-v1", &writer::kms_v1(KEY, &plain, "p", &MATERIAL, &[1, 1, 7])?)?;
    for (name, provider) in [
        ("aesgcm", StaticProvider::AesGcm),
        ("aescbc", StaticProvider::AesCbc),
        ("secretbox", StaticProvider::Secretbox),
    ] {
        write(dir, "etcd_value", name, &writer::static_key(provider, KEY, &plain, "key1", &MATERIAL)?)?;
    }
    Ok(())
}

fn selector(op: Operation) -> u8 {
    u8::try_from(Operation::ALL.iter().position(|o| *o == op).unwrap_or(0)).unwrap_or(0)
}

fn kms_request(dir: &Path) -> Result<(), Error> {
    let key = "1234abcd-12ab-34cd-56ef-1234567890ab";
    let seeds: [(&str, Operation, String); 6] = [
        (
            "encrypt",
            Operation::Encrypt,
            format!(r#"{{"KeyId":"alias/k8s","Plaintext":"aGVsbG8=","EncryptionContext":{{"app":"x"}}}}"#),
        ),
        (
            "decrypt",
            Operation::Decrypt,
            r#"{"CiphertextBlob":"AQEC","KeyId":"arn:aws:kms:us-east-1:111122223333:alias/k8s"}"#.into(),
        ),
        (
            "create-key",
            Operation::CreateKey,
            format!(
                r#"{{"Description":"d","Policy":{:?},"Tags":[{{"TagKey":"t","TagValue":"v"}}]}}"#,
                envelope_kms_server::policy::default_policy("111122223333")
            ),
        ),
        ("generate-data-key", Operation::GenerateDataKey, format!(r#"{{"KeyId":"{key}","KeySpec":"AES_256"}}"#)),
        (
            "import",
            Operation::ImportKeyMaterial,
            format!(
                r#"{{"KeyId":"{key}","ImportToken":"AQI=","EncryptedKeyMaterial":"AwQ=","ExpirationModel":"KEY_MATERIAL_EXPIRES","ValidTo":1767225600}}"#
            ),
        ),
        (
            "enable-rotation",
            Operation::EnableKeyRotation,
            format!(r#"{{"KeyId":"arn:aws:kms:us-east-1:111122223333:key/{key}","RotationPeriodInDays":90}}"#),
        ),
    ];
    for (name, op, body) in seeds {
        let mut input = vec![selector(op)];
        input.extend_from_slice(body.as_bytes());
        write(dir, "kms_request", name, &input)?;
    }
    write(dir, "kms_request", "target", b"\0TrentService.Encrypt")?;
    write(dir, "kms_request", "date", b"\020260101T000000Z")
}

fn kms_policy(dir: &Path) -> Result<(), Error> {
    write(dir, "kms_policy", "default", envelope_kms_server::policy::default_policy("111122223333").as_bytes())?;
    write(dir, "kms_policy", "admin", envelope_kms_server::policy::ADMIN_IDENTITY_POLICY.as_bytes())?;
    let conditions = r#"{"Version":"2012-10-17","Statement":[
{"Sid":"deny","Effect":"Deny","Principal":"*","Action":["kms:Decrypt","kms:Re*"],"Resource":"*",
 "Condition":{"StringNotLikeIfExists":{"kms:EncryptionContext:Purpose":"x"}}},
{"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::111122223333:user/app","444455556666"]},"Action":"kms:Encrypt*","Resource":"*",
 "Condition":{"StringLike":{"kms:EncryptionContext:Purpose":"f?zz*"},"StringEquals":{"kms:CallerAccount":"111122223333"}}}]}"#;
    write(dir, "kms_policy", "conditions", conditions.as_bytes())?;
    let identity =
        r#"{"Statement":{"Effect":"Allow","Action":"kms:*","Resource":"arn:aws:kms:us-east-1:111122223333:key/*"}}"#;
    write(dir, "kms_policy", "identity", identity.as_bytes())?;
    write(dir, "kms_policy", "glob", b"kms:*crypt?\0kms:Decrypt")
}

fn kms_sigv4(dir: &Path) -> Result<(), Error> {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let body = br#"{"KeyId":"alias/k8s","Plaintext":"aGVsbG8="}"#;
    for (name, access_key, secret, token) in [
        ("signed", "AKIDFUZZFUZZFUZZ0001", "fuzz-secret-0001", None),
        ("session", "AKIDFUZZFUZZFUZZ0002", "fuzz-secret-0002", Some("fuzz-session-token")),
    ] {
        let mut headers = vec![
            ("host", "127.0.0.1:8080".to_string()),
            ("content-type", "application/x-amz-json-1.1".to_string()),
            ("x-amz-target", "TrentService.Encrypt".to_string()),
        ];
        let identity: aws_smithy_runtime_api::client::identity::Identity =
            aws_credential_types::Credentials::new(access_key, secret, token.map(str::to_string), None, "seeds").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("kms")
            .time(now)
            .settings(SigningSettings::default())
            .build()?
            .into();
        let hash = hex_sha256(body);
        let request = SignableRequest::new(
            "POST",
            "/",
            headers.iter().map(|(n, v)| (*n, v.as_str())),
            SignableBody::Precomputed(hash),
        )?;
        let (instructions, _) = sign(request, &params)?.into_parts();
        for (n, v) in instructions.headers() {
            headers.push((n, v.to_string()));
        }
        let mut input = b"POST /\n".to_vec();
        for (n, v) in &headers {
            input.extend_from_slice(format!("{n}: {v}\n").as_bytes());
        }
        input.push(b'\n');
        input.extend_from_slice(body);
        write(dir, "kms_sigv4", name, &input)?;
    }
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    envelope_keystore::crypto::sha256(&[bytes]).iter().map(|b| format!("{b:02x}")).collect()
}

fn kms_import(dir: &Path) -> Result<(), Error> {
    let mut material = vec![3u8];
    material.extend_from_slice(&[0x11; 32]);
    write(dir, "kms_import", "oaep-material", &material)?;
    material[0] = 4;
    write(dir, "kms_import", "hybrid-material", &material)?;
    let mut wrapped = vec![0u8];
    wrapped.extend_from_slice(&[0x22; 256]);
    write(dir, "kms_import", "oaep-wrapped", &wrapped)?;
    wrapped[0] = 1;
    wrapped.extend_from_slice(&[0x33; 40]);
    write(dir, "kms_import", "hybrid-wrapped", &wrapped)?;
    let mut token = vec![2u8, 1];
    token.extend_from_slice(&[0x44; 60]);
    write(dir, "kms_import", "token", &token)
}

/// The fuzz store's root key file (the same bytes as in `fuzz_targets/key_export.rs`).
const ROOT_KEY_FILE: [u8; 40] = *b"ENVROOT1ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";

fn key_export(dir: &Path) -> Result<(), Error> {
    use std::io::Write;
    let tmp = tempfile::tempdir()?;
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp.path().join("root.key"))?;
    f.write_all(&ROOT_KEY_FILE)?;
    drop(f);
    let store = KeyStore::open(tmp.path())?;
    let a = store.create_key(Some("alias/fuzz"), "clashes with the fuzz store's alias")?;
    store.rotate(&KeyRef::parse(&a.key_id)?)?;
    let b = store.create_key(Some("alias/seed"), "")?;
    store.set_enabled(&KeyRef::parse(&b.key_id)?, false)?;
    let export = store.export()?;
    let mut file = vec![0u8];
    file.extend_from_slice(&export.bytes);
    write(dir, "key_export", "file", &file)?;
    let outer: serde_json::Value = serde_json::from_slice(&export.bytes)?;
    let mut payload = vec![1u8];
    payload.extend_from_slice(outer["payload"].as_str().unwrap_or_default().as_bytes());
    write(dir, "key_export", "payload", &payload)
}

fn config_yaml(dir: &Path) -> Result<(), Error> {
    let credentials = r#"- access_key_id: AKIDFUZZFUZZFUZZ0001
  secret_access_key: fuzz-secret
  principal: arn:aws:iam::111122223333:user/app
  policy:
    Statement:
      - Effect: Allow
        Action: ["kms:Encrypt", "kms:Decrypt"]
        Resource: "arn:aws:kms:us-east-1:111122223333:alias/k8s"
- access_key_id: AKIDFUZZFUZZFUZZ0002
  secret_access_key: other
  session_token: t
  principal: arn:aws:iam::111122223333:role/r
"#;
    write(dir, "config_yaml", "credentials", credentials.as_bytes())?;
    let encryption = r#"apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps.*]
    providers:
      - kms: {apiVersion: v2, name: envelope, endpoint: "unix:///run/envelope/kms.sock", timeout: 3s}
      - kms: {name: old, endpoint: "unix:///run/old.sock", cachesize: 100}
      - aesgcm: {keys: [{name: key1, secret: "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="}]}
      - identity: {}
"#;
    write(dir, "config_yaml", "encryption-config", encryption.as_bytes())?;
    let seed = r#"keys:
  - alias: alias/k8s-master-key
    description: Kubernetes Secrets KEK
    rotation_period_days: 365
    tags: { team: platform }
    policy:
      Version: "2012-10-17"
      Statement:
        - Effect: Allow
          Principal: { AWS: "arn:aws:iam::111122223333:root" }
          Action: "kms:*"
          Resource: "*"
  - alias: second
"#;
    write(dir, "config_yaml", "seed", seed.as_bytes())
}
