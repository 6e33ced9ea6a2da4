//! The official AWS SDK for Rust (aws-sdk-kms) against `envelope kms serve`, served in process
//! on a loopback port (envelope_test_support::kms) with real SigV4 and real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use envelope_test_support::kms::{self, AKID};

#[tokio::test]
async fn sdk_walkthrough_encrypt_decrypt_rotate_disable() {
    let server = kms::start().await;
    let c = &server.sdk_client(AKID);
    let md = c.create_key().description("sdk").send().await.unwrap().key_metadata.unwrap();
    let key_id = md.key_id().to_string();
    assert!(md.arn().unwrap().ends_with(&format!(":key/{key_id}")));
    c.create_alias().alias_name("alias/k8s-master-key").target_key_id(&key_id).send().await.unwrap();

    // Encrypt with the alias and a context; decrypt with the context and without a KeyId.
    let ct = c
        .encrypt()
        .key_id("alias/k8s-master-key")
        .plaintext(Blob::new(b"sdk plaintext".to_vec()))
        .encryption_context("cluster", "prod")
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    let out = c.decrypt().ciphertext_blob(ct.clone()).encryption_context("cluster", "prod").send().await.unwrap();
    assert_eq!(out.plaintext.unwrap().as_ref(), b"sdk plaintext");
    assert_eq!(out.key_id.unwrap(), md.arn().unwrap());
    // A wrong context is InvalidCiphertextException, as the SDK models it.
    let err = c.decrypt().ciphertext_blob(ct.clone()).encryption_context("cluster", "dev").send().await.unwrap_err();
    assert!(err.into_service_error().is_invalid_ciphertext_exception());

    // Data keys.
    let dk = c.generate_data_key().key_id(&key_id).key_spec(DataKeySpec::Aes256).send().await.unwrap();
    let plain = dk.plaintext.unwrap();
    assert_eq!(plain.as_ref().len(), 32);
    let back = c.decrypt().ciphertext_blob(dk.ciphertext_blob.unwrap()).send().await.unwrap();
    assert_eq!(back.plaintext.unwrap().as_ref(), plain.as_ref());

    // Rotation: the material id changes; old ciphertexts still decrypt.
    let before = c.describe_key().key_id(&key_id).send().await.unwrap().key_metadata.unwrap();
    c.rotate_key_on_demand().key_id(&key_id).send().await.unwrap();
    let after = c.describe_key().key_id(&key_id).send().await.unwrap().key_metadata.unwrap();
    assert_ne!(before.current_key_material_id(), after.current_key_material_id());
    let out = c.decrypt().ciphertext_blob(ct.clone()).encryption_context("cluster", "prod").send().await.unwrap();
    assert_eq!(out.plaintext.unwrap().as_ref(), b"sdk plaintext");

    // Disabled keys refuse to encrypt with DisabledException.
    c.disable_key().key_id(&key_id).send().await.unwrap();
    let err = c.encrypt().key_id(&key_id).plaintext(Blob::new(b"x".to_vec())).send().await.unwrap_err();
    assert!(err.into_service_error().is_disabled_exception());
    c.enable_key().key_id(&key_id).send().await.unwrap();

    // Paginated listing.
    let keys = c.list_keys().send().await.unwrap();
    assert!(keys.keys().iter().any(|k| k.key_id() == Some(key_id.as_str())));
    let aliases = c.list_aliases().send().await.unwrap();
    assert!(aliases.aliases().iter().any(|a| a.alias_name() == Some("alias/k8s-master-key")));
}

#[tokio::test]
async fn sdk_with_a_wrong_secret_gets_a_signature_error() {
    let server = kms::start().await;
    let client = kms::sdk_client(&server.endpoint(), AKID, "wrong-secret-wrong-secret-wrong-secret-0");
    let err = client.list_keys().send().await.unwrap_err();
    let code = err.into_service_error().meta().code().map(str::to_string);
    assert_eq!(code.as_deref(), Some("InvalidSignatureException"));
}

#[tokio::test]
async fn sdk_grants_lifecycle() {
    use aws_sdk_kms::types::{GrantConstraints, GrantOperation};
    let server = kms::start().await;
    let admin = &server.sdk_client(AKID);
    let app = &server.sdk_client(kms::APP_AKID);
    // A key only the admin may use: whatever the app does on it comes from a grant.
    let policy = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{}"}},"Action":"kms:*","Resource":"*"}}]}}"#,
        kms::ADMIN
    );
    let key_id = admin.create_key().policy(policy).send().await.unwrap().key_metadata.unwrap().key_id().to_string();
    let encrypt = |ctx: Option<(&str, &str)>| {
        let mut r = app.encrypt().key_id(&key_id).plaintext(Blob::new(b"granted".to_vec()));
        if let Some((k, v)) = ctx {
            r = r.encryption_context(k, v);
        }
        r.send()
    };
    assert!(
        encrypt(Some(("app", "web"))).await.unwrap_err().into_service_error().meta().code()
            == Some("AccessDeniedException")
    );

    let g = admin
        .create_grant()
        .key_id(&key_id)
        .grantee_principal(kms::APP)
        .operations(GrantOperation::Encrypt)
        .operations(GrantOperation::Decrypt)
        .constraints(GrantConstraints::builder().encryption_context_subset("app", "web").build())
        .name("sdk-grant")
        .send()
        .await
        .unwrap();
    let (grant_id, token) = (g.grant_id.unwrap(), g.grant_token.unwrap());
    let ct = encrypt(Some(("app", "web"))).await.unwrap().ciphertext_blob.unwrap();
    assert!(encrypt(None).await.unwrap_err().into_service_error().meta().code() == Some("AccessDeniedException"));
    let out = app.decrypt().ciphertext_blob(ct.clone()).encryption_context("app", "web").send().await.unwrap();
    assert_eq!(out.plaintext.unwrap().as_ref(), b"granted");

    let listed = admin.list_grants().key_id(&key_id).send().await.unwrap();
    let entry = &listed.grants()[0];
    assert_eq!(entry.grant_id(), Some(grant_id.as_str()));
    assert_eq!(entry.grantee_principal(), Some(kms::APP));
    assert_eq!(entry.name(), Some("sdk-grant"));
    assert!(entry.creation_date().is_some());
    assert_eq!(
        entry.constraints().and_then(|c| c.encryption_context_subset()).and_then(|m| m.get("app")).map(String::as_str),
        Some("web")
    );

    let err = admin.retire_grant().grant_token("not-a-token").send().await.unwrap_err();
    assert!(err.into_service_error().is_invalid_grant_token_exception());
    admin.retire_grant().grant_token(token).send().await.unwrap();
    assert!(
        encrypt(Some(("app", "web"))).await.unwrap_err().into_service_error().meta().code()
            == Some("AccessDeniedException")
    );
    let err = admin.revoke_grant().key_id(&key_id).grant_id(grant_id).send().await.unwrap_err();
    assert!(err.into_service_error().is_not_found_exception());
}
