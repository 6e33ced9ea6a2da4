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

/// RSA ENCRYPT_DECRYPT keys: the SDK's Encrypt/Decrypt with RSAES_OAEP_*, a ciphertext made
/// offline with the key's public key (RSA-OAEP in aws-lc-rs) decrypted by the server, and the
/// errors the SDK models.
#[tokio::test]
async fn sdk_rsa_encryption_keys_encrypt_and_decrypt() {
    use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
    use aws_sdk_kms::types::{EncryptionAlgorithmSpec as Alg, KeySpec, KeyUsageType};
    let server = kms::start().await;
    let c = &server.sdk_client(AKID);
    let md = c
        .create_key()
        .key_spec(KeySpec::Rsa2048)
        .key_usage(KeyUsageType::EncryptDecrypt)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    let key_id = md.key_id().to_string();
    assert_eq!(md.encryption_algorithms(), [Alg::RsaesOaepSha1, Alg::RsaesOaepSha256]);
    for alg in [Alg::RsaesOaepSha1, Alg::RsaesOaepSha256] {
        let e = c
            .encrypt()
            .key_id(&key_id)
            .plaintext(Blob::new(vec![7u8; 190]))
            .encryption_algorithm(alg.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(e.encryption_algorithm(), Some(&alg));
        let ct = e.ciphertext_blob.unwrap();
        assert_eq!(ct.as_ref().len(), 256);
        let d = c.decrypt().ciphertext_blob(ct).key_id(&key_id).encryption_algorithm(alg.clone()).send().await.unwrap();
        assert_eq!((d.encryption_algorithm(), d.key_material_id()), (Some(&alg), None));
        assert_eq!(d.plaintext.unwrap().as_ref(), &[7u8; 190][..]);
    }
    // Offline encryption with GetPublicKey's key.
    let pk = c.get_public_key().key_id(&key_id).send().await.unwrap();
    assert_eq!(pk.encryption_algorithms().len(), 2);
    assert!(pk.signing_algorithms().is_empty());
    let public =
        OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(pk.public_key.unwrap().as_ref()).unwrap()).unwrap();
    let mut ct = vec![0u8; public.ciphertext_size()];
    let ct = public.encrypt(&OAEP_SHA256_MGF1SHA256, b"made offline", &mut ct, None).unwrap().to_vec();
    let d = c
        .decrypt()
        .ciphertext_blob(Blob::new(ct.clone()))
        .key_id(&key_id)
        .encryption_algorithm(Alg::RsaesOaepSha256)
        .send()
        .await
        .unwrap();
    assert_eq!(d.plaintext.unwrap().as_ref(), b"made offline");
    // Errors: no KeyId, the default algorithm, too long a plaintext.
    let err =
        c.decrypt().ciphertext_blob(Blob::new(ct)).encryption_algorithm(Alg::RsaesOaepSha256).send().await.unwrap_err();
    assert!(err.into_service_error().is_invalid_ciphertext_exception());
    let err = c.encrypt().key_id(&key_id).plaintext(Blob::new(b"x".to_vec())).send().await.unwrap_err();
    assert!(err.into_service_error().is_invalid_key_usage_exception());
    let err = c
        .encrypt()
        .key_id(&key_id)
        .plaintext(Blob::new(vec![0u8; 191]))
        .encryption_algorithm(Alg::RsaesOaepSha256)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("ValidationException"));
}

/// KEY_AGREEMENT keys: DeriveSharedSecret through the SDK gives the secret the peer computes
/// on its side (ECDH in aws-lc-rs with the key's GetPublicKey output).
#[tokio::test]
async fn sdk_derive_shared_secret_agrees_with_the_peer() {
    use aws_lc_rs::agreement::{self, ECDH_P384, PrivateKey, UnparsedPublicKey};
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_sdk_kms::types::{KeyAgreementAlgorithmSpec, KeySpec, KeyUsageType};
    let server = kms::start().await;
    let c = &server.sdk_client(AKID);
    let md = c
        .create_key()
        .key_spec(KeySpec::EccNistP384)
        .key_usage(KeyUsageType::KeyAgreement)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(md.key_agreement_algorithms(), [KeyAgreementAlgorithmSpec::Ecdh]);
    let key_id = md.key_id().to_string();
    let peer = PrivateKey::generate(&ECDH_P384).unwrap();
    let peer_der: PublicKeyX509Der<'static> = peer.compute_public_key().unwrap().as_der().unwrap();
    let out = c
        .derive_shared_secret()
        .key_id(&key_id)
        .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
        .public_key(Blob::new(peer_der.as_ref().to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.key_id(), md.arn());
    assert_eq!(out.key_agreement_algorithm(), Some(&KeyAgreementAlgorithmSpec::Ecdh));
    let secret = out.shared_secret.unwrap();
    assert_eq!(secret.as_ref().len(), 48);
    let pk = c.get_public_key().key_id(&key_id).send().await.unwrap();
    assert_eq!(pk.key_agreement_algorithms(), [KeyAgreementAlgorithmSpec::Ecdh]);
    let kms_public = pk.public_key.unwrap();
    let ours =
        agreement::agree(&peer, UnparsedPublicKey::new(&ECDH_P384, kms_public.as_ref()), "agree", |s| Ok(s.to_vec()))
            .unwrap();
    assert_eq!(ours, secret.as_ref());
    // A peer on another curve; a key of another usage.
    let p256 = PrivateKey::generate(&agreement::ECDH_P256).unwrap();
    let p256_der: PublicKeyX509Der<'static> = p256.compute_public_key().unwrap().as_der().unwrap();
    let err = c
        .derive_shared_secret()
        .key_id(&key_id)
        .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
        .public_key(Blob::new(p256_der.as_ref().to_vec()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("ValidationException"));
    let aes = c.create_key().send().await.unwrap().key_metadata.unwrap().key_id().to_string();
    let err = c
        .derive_shared_secret()
        .key_id(&aes)
        .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
        .public_key(Blob::new(peer_der.as_ref().to_vec()))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_key_usage_exception());
}

/// HMAC keys, signing keys and data key pairs through the SDK: GenerateMac/VerifyMac,
/// Sign/Verify with ECDSA and RSA-PSS, GetPublicKey, GenerateDataKeyPair(WithoutPlaintext).
#[tokio::test]
async fn sdk_hmac_signing_and_data_key_pairs() {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    use aws_sdk_kms::types::{
        DataKeyPairSpec, KeySpec, KeyUsageType, MacAlgorithmSpec, MessageType, SigningAlgorithmSpec as S,
    };
    let server = kms::start().await;
    let c = &server.sdk_client(AKID);
    let create = |spec: KeySpec, usage: KeyUsageType| c.create_key().key_spec(spec).key_usage(usage).send();

    // HMAC.
    let mac_key = create(KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac).await.unwrap().key_metadata.unwrap();
    assert_eq!(mac_key.mac_algorithms(), [MacAlgorithmSpec::HmacSha256]);
    let mac_key = mac_key.key_id().to_string();
    let mac = c
        .generate_mac()
        .key_id(&mac_key)
        .mac_algorithm(MacAlgorithmSpec::HmacSha256)
        .message(Blob::new(b"m".to_vec()))
        .send()
        .await
        .unwrap()
        .mac
        .unwrap();
    assert_eq!(mac.as_ref().len(), 32);
    let verify_mac = |mac: Blob| {
        c.verify_mac()
            .key_id(&mac_key)
            .mac_algorithm(MacAlgorithmSpec::HmacSha256)
            .message(Blob::new(b"m".to_vec()))
            .mac(mac)
            .send()
    };
    assert!(verify_mac(mac.clone()).await.unwrap().mac_valid);
    let mut bad = mac.into_inner();
    bad[0] ^= 1;
    assert!(verify_mac(Blob::new(bad)).await.unwrap_err().into_service_error().is_kms_invalid_mac_exception());

    // Signing: ECDSA and RSA-PSS, verified by the server; a changed message does not verify.
    for (spec, alg) in [(KeySpec::EccNistP256, S::EcdsaSha256), (KeySpec::Rsa2048, S::RsassaPssSha256)] {
        let key = create(spec.clone(), KeyUsageType::SignVerify).await.unwrap().key_metadata.unwrap();
        assert!(key.signing_algorithms().contains(&alg));
        let key = key.key_id().to_string();
        let pk = c.get_public_key().key_id(&key).send().await.unwrap();
        assert_eq!((pk.key_spec(), pk.key_usage()), (Some(&spec), Some(&KeyUsageType::SignVerify)));
        assert!(pk.signing_algorithms().contains(&alg) && pk.encryption_algorithms().is_empty());
        assert_eq!(pk.public_key.unwrap().as_ref()[0], 0x30, "a DER SubjectPublicKeyInfo");
        let sig = c
            .sign()
            .key_id(&key)
            .message(Blob::new(b"signed".to_vec()))
            .message_type(MessageType::Raw)
            .signing_algorithm(alg.clone())
            .send()
            .await
            .unwrap()
            .signature
            .unwrap();
        let verify = |message: &'static [u8]| {
            c.verify()
                .key_id(&key)
                .message(Blob::new(message.to_vec()))
                .signature(sig.clone())
                .signing_algorithm(alg.clone())
                .send()
        };
        assert!(verify(b"signed").await.unwrap().signature_valid);
        assert!(verify(b"signeD").await.unwrap_err().into_service_error().is_kms_invalid_signature_exception());
    }

    // Data key pairs under a symmetric key: the private key decrypts from its ciphertext and
    // is the public key's.
    let aes = c.create_key().send().await.unwrap().key_metadata.unwrap().key_id().to_string();
    let pair =
        c.generate_data_key_pair().key_id(&aes).key_pair_spec(DataKeyPairSpec::EccNistP256).send().await.unwrap();
    assert_eq!(pair.key_pair_spec(), Some(&DataKeyPairSpec::EccNistP256));
    let private = pair.private_key_plaintext.unwrap();
    let back = c.decrypt().ciphertext_blob(pair.private_key_ciphertext_blob.unwrap()).send().await.unwrap();
    assert_eq!(back.plaintext.unwrap().as_ref(), private.as_ref());
    let local = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, private.as_ref()).unwrap();
    assert_eq!(local.public_key().as_der().unwrap().as_ref(), pair.public_key.unwrap().as_ref());
    let pair = c
        .generate_data_key_pair_without_plaintext()
        .key_id(&aes)
        .key_pair_spec(DataKeyPairSpec::Rsa2048)
        .send()
        .await
        .unwrap();
    assert!(pair.private_key_ciphertext_blob.is_some() && pair.public_key.is_some());
    assert_eq!(pair.key_id(), Some(format!("arn:aws:kms:{}:{}:key/{aes}", kms::REGION, kms::ACCOUNT).as_str()));
}
