//! Parsing and validation of every operation's requests.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;

use super::*;
use crate::protocol::{WrappingAlgorithm, WrappingKeySpec};
use envelope_keystore::{KeySpec, KeyUsage, MacAlgorithm};

fn code(r: Result<Request>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.aws().0,
    }
}

#[test]
fn targets() {
    assert_eq!(Operation::from_target("TrentService.Encrypt").unwrap(), Operation::Encrypt);
    assert_eq!(Operation::from_target("TrentService.Nope").unwrap_err().aws().0, "UnknownOperationException");
    assert_eq!(Operation::from_target("Encrypt").unwrap_err().aws().0, "UnknownOperationException");
    assert_eq!(
        Operation::from_target("TrentService.ReplicateKey").unwrap_err().aws().0,
        "UnsupportedOperationException"
    );
    for op in Operation::ALL {
        let prefix = if op.service() == "kms" { "TrentService." } else { super::CLOUDTRAIL_TARGET_PREFIX };
        assert_eq!(Operation::from_target(&format!("{prefix}{}", op.name())).unwrap(), *op);
    }
}

#[test]
fn encrypt_parsing_and_validation() {
    let r = parse_request(
        Operation::Encrypt,
        br#"{"KeyId":"alias/x","Plaintext":"aGVsbG8=","EncryptionContext":{"a":"b"}}"#,
    );
    let Ok(Request::Crypto(crypto::Request::Encrypt { key_id, plaintext, context, algorithm, dry_run })) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        (key_id.as_str(), &plaintext[..], context["a"].as_str(), algorithm.as_str(), dry_run),
        ("alias/x", &b"hello"[..], "b", "SYMMETRIC_DEFAULT", false)
    );

    assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"k"}"#)), "ValidationException");
    assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":""}"#)), "ValidationException");
    let big = format!(r#"{{"KeyId":"k","Plaintext":"{}"}}"#, STANDARD.encode([0u8; 4097]));
    assert_eq!(code(parse_request(Operation::Encrypt, big.as_bytes())), "ValidationException");
    assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"!!"}"#)), "SerializationException");
    assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":5,"Plaintext":"aGk="}"#)), "SerializationException");
    assert_eq!(
        code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"a":1}}"#)),
        "SerializationException"
    );
    assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"#)), "SerializationException");
    assert_eq!(code(parse_request(Operation::Encrypt, br#"[]"#)), "SerializationException");
    // An RSA algorithm is checked against the key (when it runs), not while parsing.
    assert!(matches!(
        parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionAlgorithm":"RSAES_OAEP_SHA_1"}"#),
        Ok(Request::Crypto(crypto::Request::Encrypt { ref algorithm, .. })) if algorithm == "RSAES_OAEP_SHA_1"
    ));
    assert_eq!(
        code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionAlgorithm":"ROT13"}"#)),
        "ValidationException"
    );
}

#[test]
fn validation_messages_are_aws_shaped() {
    let e = parse_request(Operation::Encrypt, b"{}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "2 validation errors detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null; \
         Value null at 'plaintext' failed to satisfy constraint: Member must not be null"
    );
    let e = parse_request(Operation::ListKeys, br#"{"Limit":0}"#).unwrap_err();
    assert!(e.to_string().starts_with("1 validation error detected: Value '0' at 'limit'"), "{e}");
}

#[test]
fn data_key_spec_rules() {
    let ok = |b: &[u8]| match parse_request(Operation::GenerateDataKey, b) {
        Ok(Request::Crypto(crypto::Request::GenerateDataKey { len, .. })) => len,
        other => panic!("{other:?}"),
    };
    assert_eq!(ok(br#"{"KeyId":"k","KeySpec":"AES_256"}"#), 32);
    assert_eq!(ok(br#"{"KeyId":"k","KeySpec":"AES_128"}"#), 16);
    assert_eq!(ok(br#"{"KeyId":"k","NumberOfBytes":7}"#), 7);
    for bad in [
        &br#"{"KeyId":"k"}"#[..],
        br#"{"KeyId":"k","KeySpec":"AES_256","NumberOfBytes":32}"#,
        br#"{"KeyId":"k","NumberOfBytes":0}"#,
        br#"{"KeyId":"k","NumberOfBytes":1025}"#,
        br#"{"KeyId":"k","KeySpec":"AES_512"}"#,
    ] {
        assert_eq!(code(parse_request(Operation::GenerateDataKey, bad)), "ValidationException");
    }
    assert_eq!(code(parse_request(Operation::GenerateRandom, b"{}")), "ValidationException");
    assert_eq!(code(parse_request(Operation::GenerateRandom, br#"{"NumberOfBytes":1.5}"#)), "SerializationException");
}

#[test]
fn mac_requests() {
    let token = super::grants::issue_token(&"ab".repeat(32)).unwrap();
    let ok = format!(
        r#"{{"KeyId":"k","MacAlgorithm":"HMAC_SHA_384","Message":"aGVsbG8=","GrantTokens":["{token}"],"DryRun":true}}"#
    );
    match parse_request(Operation::GenerateMac, ok.as_bytes()) {
        Ok(Request::Mac(mac::Request::GenerateMac { key_id, algorithm, message, dry_run })) => {
            assert_eq!(
                (key_id.as_str(), algorithm, &message[..], dry_run),
                ("k", MacAlgorithm::HmacSha384, &b"hello"[..], true)
            );
        }
        other => panic!("{other:?}"),
    }
    let ok = br#"{"KeyId":"k","MacAlgorithm":"HMAC_SHA_224","Message":"aGVsbG8=","Mac":"AAEC"}"#;
    match parse_request(Operation::VerifyMac, ok) {
        Ok(Request::Mac(mac::Request::VerifyMac { algorithm, mac, dry_run: false, .. })) => {
            assert_eq!((algorithm, mac), (MacAlgorithm::HmacSha224, vec![0, 1, 2]));
        }
        other => panic!("{other:?}"),
    }
    for (op, body, want) in [
        (
            Operation::GenerateMac,
            &br#"{}"#[..],
            "3 validation errors detected: Value null at 'message' failed to satisfy constraint: Member must not be null; Value null at 'keyId' failed to satisfy constraint: Member must not be null; Value null at 'macAlgorithm' failed to satisfy constraint: Member must not be null",
        ),
        (
            Operation::GenerateMac,
            br#"{"KeyId":"k","MacAlgorithm":"HMAC_SHA_1","Message":"aA=="}"#,
            "1 validation error detected: Value 'HMAC_SHA_1' at 'macAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384, HMAC_SHA_512]",
        ),
        (
            Operation::GenerateMac,
            br#"{"KeyId":"k","MacAlgorithm":"HMAC_SHA_256","Message":""}"#,
            "1 validation error detected: Value at 'message' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ),
        (
            Operation::VerifyMac,
            br#"{"KeyId":"k","MacAlgorithm":"HMAC_SHA_256","Message":"aA=="}"#,
            "1 validation error detected: Value null at 'mac' failed to satisfy constraint: Member must not be null",
        ),
    ] {
        let e = parse_request(op, body).unwrap_err();
        assert_eq!((e.aws().0, e.to_string().as_str()), ("ValidationException", want));
    }
    let long = format!(r#"{{"KeyId":"k","MacAlgorithm":"HMAC_SHA_256","Message":"{}"}}"#, STANDARD.encode([0u8; 4097]));
    assert_eq!(code(parse_request(Operation::GenerateMac, long.as_bytes())), "ValidationException");
    assert_eq!(
        code(parse_request(Operation::GenerateMac, br#"{"KeyId":"k","MacAlgorithm":"HMAC_SHA_256","Message":"!!"}"#)),
        "SerializationException"
    );
    // The message and the MAC are not part of the audit view.
    let parsed = super::parse(
        Operation::VerifyMac,
        br#"{"KeyId":"k","MacAlgorithm":"HMAC_SHA_256","Message":"aA==","Mac":"AAEC"}"#,
    )
    .unwrap();
    let view = match parsed.params {
        crate::audit::Params::Typed(raw) => serde_json::to_value(&*raw).unwrap(),
        _ => panic!("typed params expected"),
    };
    assert_eq!(view, serde_json::json!({"keyId": "k", "macAlgorithm": "HMAC_SHA_256"}));
}

#[test]
fn sign_requests() {
    let ok = br#"{"KeyId":"k","SigningAlgorithm":"ECDSA_SHA_256","Message":"aGVsbG8=","MessageType":"DIGEST"}"#;
    match parse_request(Operation::Sign, ok) {
        Ok(Request::Sign(sign::Request::Sign { algorithm, message, digest: true, dry_run: false, .. })) => {
            assert_eq!((algorithm.as_str(), &message[..]), ("ECDSA_SHA_256", &b"hello"[..]));
        }
        other => panic!("{other:?}"),
    }
    let ok = br#"{"KeyId":"k","SigningAlgorithm":"ECDSA_SHA_384","Message":"aGVsbG8=","Signature":"AAEC"}"#;
    assert!(matches!(
        parse_request(Operation::Verify, ok),
        Ok(Request::Sign(sign::Request::Verify { digest: false, .. }))
    ));
    assert!(matches!(
        parse_request(Operation::GetPublicKey, br#"{"KeyId":"k"}"#),
        Ok(Request::Sign(sign::Request::GetPublicKey { .. }))
    ));
    for (op, body) in [
        (Operation::Sign, &br#"{"KeyId":"k","Message":"aA=="}"#[..]),
        (Operation::Sign, br#"{"KeyId":"k","SigningAlgorithm":"X","Message":"aA=="}"#),
        (Operation::Sign, br#"{"KeyId":"k","SigningAlgorithm":"ECDSA_SHA_256","Message":"aA==","MessageType":"X"}"#),
        (
            Operation::Sign,
            br#"{"KeyId":"k","SigningAlgorithm":"ECDSA_SHA_256","Message":"aA==","MessageType":"EXTERNAL_MU"}"#,
        ),
        (Operation::Verify, br#"{"KeyId":"k","SigningAlgorithm":"ECDSA_SHA_256","Message":"aA=="}"#),
        (Operation::GetPublicKey, br#"{}"#),
    ] {
        assert_eq!(code(parse_request(op, body)), "ValidationException", "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn rsa_encryption_algorithms_are_parsed_for_the_key_to_check() {
    let ok = br#"{"CiphertextBlob":"AAEC","KeyId":"k","EncryptionAlgorithm":"RSAES_OAEP_SHA_256"}"#;
    match parse_request(Operation::Decrypt, ok) {
        Ok(Request::Crypto(crypto::Request::Decrypt { algorithm, key_id: Some(k), .. })) => {
            assert_eq!((algorithm.as_str(), k.as_str()), ("RSAES_OAEP_SHA_256", "k"))
        }
        other => panic!("{other:?}"),
    }
    let ok = br#"{"CiphertextBlob":"AAEC","DestinationKeyId":"d","SourceEncryptionAlgorithm":"RSAES_OAEP_SHA_1"}"#;
    match parse_request(Operation::ReEncrypt, ok) {
        Ok(Request::Crypto(crypto::Request::ReEncrypt { source_algorithm, destination_algorithm, .. })) => {
            assert_eq!(
                (source_algorithm.as_str(), destination_algorithm.as_str()),
                ("RSAES_OAEP_SHA_1", "SYMMETRIC_DEFAULT")
            )
        }
        other => panic!("{other:?}"),
    }
    for (op, body) in [
        (Operation::Encrypt, &br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionAlgorithm":"RSAES_OAEP_SHA_512"}"#[..]),
        (Operation::Decrypt, br#"{"CiphertextBlob":"AAEC","EncryptionAlgorithm":"rsaes_oaep_sha_1"}"#),
        (
            Operation::ReEncrypt,
            br#"{"CiphertextBlob":"AAEC","DestinationKeyId":"d","DestinationEncryptionAlgorithm":"RSA"}"#,
        ),
    ] {
        assert_eq!(code(parse_request(op, body)), "ValidationException", "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn derive_shared_secret_requests() {
    let ok = br#"{"KeyId":"k","KeyAgreementAlgorithm":"ECDH","PublicKey":"AAEC","DryRun":true}"#;
    match parse_request(Operation::DeriveSharedSecret, ok) {
        Ok(Request::Agreement(agreement::Request::DeriveSharedSecret { key_id, public_key, dry_run })) => {
            assert_eq!((key_id.as_str(), &public_key[..], dry_run), ("k", &[0u8, 1, 2][..], true))
        }
        other => panic!("{other:?}"),
    }
    let e = parse_request(Operation::DeriveSharedSecret, b"{}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "3 validation errors detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null; \
         Value null at 'keyAgreementAlgorithm' failed to satisfy constraint: Member must not be null; \
         Value null at 'publicKey' failed to satisfy constraint: Member must not be null"
    );
    let long =
        format!(r#"{{"KeyId":"k","KeyAgreementAlgorithm":"ECDH","PublicKey":"{}"}}"#, STANDARD.encode([1u8; 8193]));
    for (body, want) in [
        (&br#"{"KeyId":"k","KeyAgreementAlgorithm":"ECMQV","PublicKey":"AAEC"}"#[..], "ValidationException"),
        (br#"{"KeyId":"k","KeyAgreementAlgorithm":"ECDH","PublicKey":"!!"}"#, "SerializationException"),
        (br#"{"KeyId":"k","KeyAgreementAlgorithm":"ECDH","PublicKey":""}"#, "ValidationException"),
        (long.as_bytes(), "ValidationException"),
        (br#"{"KeyId":"","KeyAgreementAlgorithm":"ECDH","PublicKey":"AAEC"}"#, "ValidationException"),
        (br#"{"KeyId":"k","KeyAgreementAlgorithm":"ECDH","PublicKey":"AAEC","GrantTokens":[""]}"#, "ValidationException"),
        (
            br#"{"KeyId":"k","KeyAgreementAlgorithm":"ECDH","PublicKey":"AAEC","Recipient":{"AttestationDocument":"AA=="}}"#,
            "UnsupportedOperationException",
        ),
    ] {
        assert_eq!(code(parse_request(Operation::DeriveSharedSecret, body)), want, "{}", String::from_utf8_lossy(body));
    }
    // The peer's key is not in the audit view.
    let p = parse(Operation::DeriveSharedSecret, ok).unwrap();
    let crate::audit::Params::Typed(raw) = p.params else { panic!("KMS requests have typed parameters") };
    let view = serde_json::to_string(&raw).unwrap();
    assert_eq!(view, r#"{"dryRun":true,"keyAgreementAlgorithm":"ECDH","keyId":"k"}"#);
}

#[test]
fn data_key_pair_requests() {
    match parse_request(Operation::GenerateDataKeyPair, br#"{"KeyId":"k","KeyPairSpec":"RSA_3072"}"#) {
        Ok(Request::Crypto(crypto::Request::GenerateDataKeyPair { spec, with_plaintext: true, .. })) => {
            assert_eq!(spec, KeySpec::Rsa3072)
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse_request(
            Operation::GenerateDataKeyPairWithoutPlaintext,
            br#"{"KeyId":"k","KeyPairSpec":"ECC_NIST_P521"}"#
        ),
        Ok(Request::Crypto(crypto::Request::GenerateDataKeyPair { with_plaintext: false, .. }))
    ));
    for (body, want) in [
        (&br#"{"KeyId":"k"}"#[..], "ValidationException"),
        (br#"{"KeyId":"k","KeyPairSpec":"RSA_1024"}"#, "ValidationException"),
        (br#"{"KeyId":"k","KeyPairSpec":"SM2"}"#, "UnsupportedOperationException"),
        (br#"{"KeyId":"k","KeyPairSpec":"ML_KEM_512"}"#, "UnsupportedOperationException"),
    ] {
        assert_eq!(code(parse_request(Operation::GenerateDataKeyPair, body)), want);
    }
}

#[test]
fn create_key_options() {
    assert!(matches!(parse_request(Operation::CreateKey, b""), Ok(Request::Keys(keys::Request::CreateKey { .. }))));
    assert!(matches!(
        parse_request(
            Operation::CreateKey,
            br#"{"KeySpec":"SYMMETRIC_DEFAULT","KeyUsage":"ENCRYPT_DECRYPT","Origin":"AWS_KMS","Description":"d"}"#
        ),
        Ok(Request::Keys(keys::Request::CreateKey { .. }))
    ));
    // AWS checks the pair of key spec and key usage first: a usage is required beyond
    // SYMMETRIC_DEFAULT, and must be one the spec allows.
    for (body, want, text) in [
        (
            &br#"{"KeySpec":"RSA_2048"}"#[..],
            "ValidationException",
            "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys.",
        ),
        (
            br#"{"KeySpec":"HMAC_256"}"#,
            "ValidationException",
            "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys.",
        ),
        (
            br#"{"KeySpec":"HMAC_256","KeyUsage":"ENCRYPT_DECRYPT"}"#,
            "ValidationException",
            "KeyUsage ENCRYPT_DECRYPT is not compatible with KeySpec HMAC_256",
        ),
        (
            br#"{"KeyUsage":"GENERATE_VERIFY_MAC"}"#,
            "ValidationException",
            "KeyUsage GENERATE_VERIFY_MAC is not compatible with KeySpec SYMMETRIC_DEFAULT",
        ),
        (
            br#"{"CustomerMasterKeySpec":"ECC_NIST_P256","KeyUsage":"GENERATE_VERIFY_MAC"}"#,
            "ValidationException",
            "KeyUsage GENERATE_VERIFY_MAC is not compatible with KeySpec ECC_NIST_P256",
        ),
        (
            br#"{"KeySpec":"SM2","KeyUsage":"SIGN_VERIFY"}"#,
            "UnsupportedOperationException",
            "KeySpec SM2 is not supported by this server.",
        ),
        (
            br#"{"KeySpec":"ECC_SECG_P256K1","KeyUsage":"KEY_AGREEMENT"}"#,
            "ValidationException",
            "KeyUsage KEY_AGREEMENT is not compatible with KeySpec ECC_SECG_P256K1",
        ),
        (
            br#"{"KeySpec":"RSA_3072","KeyUsage":"KEY_AGREEMENT"}"#,
            "ValidationException",
            "KeyUsage KEY_AGREEMENT is not compatible with KeySpec RSA_3072",
        ),
        (
            br#"{"KeySpec":"SM2","KeyUsage":"KEY_AGREEMENT"}"#,
            "UnsupportedOperationException",
            "KeySpec SM2 is not supported by this server.",
        ),
        (
            br#"{"KeySpec":"ECC_NIST_P384","KeyUsage":"ENCRYPT_DECRYPT"}"#,
            "ValidationException",
            "KeyUsage ENCRYPT_DECRYPT is not compatible with KeySpec ECC_NIST_P384",
        ),
    ] {
        let e = parse_request(Operation::CreateKey, body).unwrap_err();
        assert_eq!((e.aws().0, e.to_string().as_str()), (want, text), "{}", String::from_utf8_lossy(body));
    }
    for (name, spec) in [
        ("HMAC_224", KeySpec::Hmac224),
        ("HMAC_256", KeySpec::Hmac256),
        ("HMAC_384", KeySpec::Hmac384),
        ("HMAC_512", KeySpec::Hmac512),
    ] {
        for member in ["KeySpec", "CustomerMasterKeySpec"] {
            let body = format!(r#"{{"{member}":"{name}","KeyUsage":"GENERATE_VERIFY_MAC"}}"#);
            match parse_request(Operation::CreateKey, body.as_bytes()) {
                Ok(Request::Keys(keys::Request::CreateKey { key_spec, external: false, .. })) => {
                    assert_eq!(key_spec, spec)
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }
    for (spec, usage, want_spec, want_usage) in [
        ("RSA_2048", "ENCRYPT_DECRYPT", KeySpec::Rsa2048, KeyUsage::EncryptDecrypt),
        ("RSA_3072", "ENCRYPT_DECRYPT", KeySpec::Rsa3072, KeyUsage::EncryptDecrypt),
        ("RSA_4096", "SIGN_VERIFY", KeySpec::Rsa4096, KeyUsage::SignVerify),
        ("ECC_NIST_P256", "KEY_AGREEMENT", KeySpec::EccNistP256, KeyUsage::KeyAgreement),
        ("ECC_NIST_P384", "KEY_AGREEMENT", KeySpec::EccNistP384, KeyUsage::KeyAgreement),
        ("ECC_NIST_P521", "KEY_AGREEMENT", KeySpec::EccNistP521, KeyUsage::KeyAgreement),
        ("ECC_NIST_P521", "SIGN_VERIFY", KeySpec::EccNistP521, KeyUsage::SignVerify),
    ] {
        let body = format!(r#"{{"KeySpec":"{spec}","KeyUsage":"{usage}"}}"#);
        match parse_request(Operation::CreateKey, body.as_bytes()) {
            Ok(Request::Keys(keys::Request::CreateKey { key_spec, key_usage, .. })) => {
                assert_eq!((key_spec, key_usage), (want_spec, want_usage), "{body}")
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    assert!(matches!(
        parse_request(Operation::CreateKey, br#"{"Origin":"EXTERNAL"}"#),
        Ok(Request::Keys(keys::Request::CreateKey { external: true, .. }))
    ));
    assert_eq!(
        code(parse_request(Operation::CreateKey, br#"{"Origin":"AWS_CLOUDHSM"}"#)),
        "UnsupportedOperationException"
    );
    assert!(matches!(
        parse_request(Operation::CreateKey, br#"{"Policy":"{}","Tags":[{"TagKey":"a","TagValue":""}]}"#),
        Ok(Request::Keys(keys::Request::CreateKey { .. }))
    ));
    assert_eq!(
        code(parse_request(Operation::CreateKey, br#"{"Tags":[{"TagKey":"aws:x","TagValue":""}]}"#)),
        "TagException"
    );
    assert_eq!(
        code(parse_request(Operation::CreateKey, br#"{"Tags":[{"TagKey":"","TagValue":""}]}"#)),
        "ValidationException"
    );
    assert_eq!(code(parse_request(Operation::CreateKey, br#"{"KeySpec":"BOGUS"}"#)), "ValidationException");
    assert_eq!(
        code(parse_request(Operation::CreateAlias, br#"{"AliasName":"alias/a b","TargetKeyId":"k"}"#)),
        "ValidationException"
    );
}

#[test]
fn management_parsing() {
    let e = parse_request(Operation::ScheduleKeyDeletion, br#"{"KeyId":"k","PendingWindowInDays":6}"#).unwrap_err();
    assert_eq!(e.aws().0, "ValidationException");
    assert!(e.to_string().contains("'pendingWindowInDays'"), "{e}");
    assert!(matches!(
        parse_request(Operation::ScheduleKeyDeletion, br#"{"KeyId":"k"}"#),
        Ok(Request::Keys(keys::Request::ScheduleKeyDeletion { window_days: 30, .. }))
    ));
    assert_eq!(
        code(parse_request(Operation::ScheduleKeyDeletion, br#"{"KeyId":"k","PendingWindowInDays":31}"#)),
        "ValidationException"
    );
    assert!(matches!(
        parse_request(Operation::EnableKeyRotation, br#"{"KeyId":"k"}"#),
        Ok(Request::Rotation(rotation::Request::EnableKeyRotation { period_days: 365, .. }))
    ));
    assert_eq!(
        code(parse_request(Operation::EnableKeyRotation, br#"{"KeyId":"k","RotationPeriodInDays":89}"#)),
        "ValidationException"
    );
    assert_eq!(code(parse_request(Operation::UpdateKeyDescription, br#"{"KeyId":"k"}"#)), "ValidationException");
    assert_eq!(code(parse_request(Operation::TagResource, br#"{"KeyId":"k"}"#)), "ValidationException");
    let many: Vec<_> = (0..51).map(|i| serde_json::json!({"TagKey": format!("k{i}"), "TagValue": "v"})).collect();
    let body = serde_json::json!({"KeyId": "k", "Tags": many}).to_string();
    assert_eq!(code(parse_request(Operation::TagResource, body.as_bytes())), "TagException");
    assert_eq!(
        code(parse_request(
            Operation::TagResource,
            br#"{"KeyId":"k","Tags":[{"TagKey":"a","TagValue":"1"},{"TagKey":"a","TagValue":"2"}]}"#
        )),
        "TagException"
    );
    assert_eq!(code(parse_request(Operation::UntagResource, br#"{"KeyId":"k"}"#)), "ValidationException");
    assert!(matches!(
        parse_request(Operation::GetKeyPolicy, br#"{"KeyId":"k"}"#),
        Ok(Request::Policies(policies::Request::GetKeyPolicy { .. }))
    ));
    assert_eq!(code(parse_request(Operation::PutKeyPolicy, br#"{"KeyId":"k"}"#)), "ValidationException");
    assert_eq!(
        code(parse_request(Operation::GetKeyPolicy, br#"{"KeyId":"k","PolicyName":"a-b"}"#)),
        "ValidationException"
    );
    assert_eq!(
        code(parse_request(Operation::ListKeyRotations, br#"{"KeyId":"k","IncludeKeyMaterial":"X"}"#)),
        "ValidationException"
    );
}

#[test]
fn reserved_context_prefix() {
    for (op, body) in [
        (Operation::Encrypt, &br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"envelope:api":"x"}}"#[..]),
        (Operation::Decrypt, br#"{"CiphertextBlob":"aGk=","EncryptionContext":{"envelope:key-id":"x"}}"#),
        (
            Operation::ReEncrypt,
            br#"{"CiphertextBlob":"aGk=","DestinationKeyId":"k","SourceEncryptionContext":{"envelope:x":""}}"#,
        ),
        (
            Operation::ReEncrypt,
            br#"{"CiphertextBlob":"aGk=","DestinationKeyId":"k","DestinationEncryptionContext":{"envelope:x":""}}"#,
        ),
        (
            Operation::GenerateDataKey,
            br#"{"KeyId":"k","KeySpec":"AES_256","EncryptionContext":{"envelope:probe":"1"}}"#,
        ),
        (
            Operation::GenerateDataKeyWithoutPlaintext,
            br#"{"KeyId":"k","NumberOfBytes":8,"EncryptionContext":{"envelope:":""}}"#,
        ),
    ] {
        assert_eq!(code(parse_request(op, body)), "ValidationException", "{op:?}");
    }
    // Only the exact prefix is reserved.
    assert_eq!(
        code(parse_request(
            Operation::Encrypt,
            br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"Envelope:api":"x","envelope":"y"}}"#
        )),
        "ok"
    );
}

#[test]
fn import_parsing() {
    let ok = parse_request(
        Operation::GetParametersForImport,
        br#"{"KeyId":"k","WrappingAlgorithm":"RSAES_OAEP_SHA_256","WrappingKeySpec":"RSA_2048"}"#,
    );
    assert!(matches!(
        ok,
        Ok(Request::Import(import::Request::GetParametersForImport {
            algorithm: WrappingAlgorithm::OaepSha256,
            key_spec: WrappingKeySpec::Rsa2048,
            ..
        }))
    ));
    assert_eq!(
        code(parse_request(
            Operation::GetParametersForImport,
            br#"{"KeyId":"k","WrappingAlgorithm":"RSAES_PKCS1_V1_5","WrappingKeySpec":"RSA_2048"}"#
        )),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(parse_request(
            Operation::GetParametersForImport,
            br#"{"KeyId":"k","WrappingAlgorithm":"X","WrappingKeySpec":"RSA_2048"}"#
        )),
        "ValidationException"
    );
    assert_eq!(code(parse_request(Operation::GetParametersForImport, br#"{"KeyId":"k"}"#)), "ValidationException");
    let base = r#""KeyId":"k","ImportToken":"aGk=","EncryptedKeyMaterial":"aGk=""#;
    let p = |extra: &str| parse_request(Operation::ImportKeyMaterial, format!("{{{base}{extra}}}").as_bytes());
    assert!(matches!(
        p(r#","ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE""#),
        Ok(Request::Import(import::Request::ImportKeyMaterial { valid_to: None, .. }))
    ));
    assert!(matches!(
        p(r#","ValidTo":1900000000.5"#),
        Ok(Request::Import(import::Request::ImportKeyMaterial { valid_to: Some(1_900_000_000), .. }))
    ));
    assert_eq!(code(p("")), "ValidationException");
    assert_eq!(
        code(p(r#","ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE","ValidTo":1900000000"#)),
        "ValidationException"
    );
    assert_eq!(code(p(r#","ExpirationModel":"NEVER""#)), "ValidationException");
    assert_eq!(
        code(p(r#","ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE","KeyMaterialId":"AB""#)),
        "ValidationException"
    );
    assert_eq!(code(parse_request(Operation::DeleteImportedKeyMaterial, br#"{"KeyId":"k"}"#)), "ok");
}

#[test]
fn import_type_material_id_and_description() {
    let base = r#""KeyId":"k","ImportToken":"aGk=","EncryptedKeyMaterial":"aGk=","ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE""#;
    let p = |extra: &str| parse_request(Operation::ImportKeyMaterial, format!("{{{base}{extra}}}").as_bytes());
    let mid = "a".repeat(64);
    assert!(matches!(
        p(r#","ImportType":"NEW_KEY_MATERIAL","KeyMaterialDescription":"next one: v2/k_1.0-x""#),
        Ok(Request::Import(import::Request::ImportKeyMaterial {
            import_type: Some(envelope_keystore::ImportType::New),
            description: Some(_),
            key_material_id: None,
            ..
        }))
    ));
    assert!(matches!(
        p(&format!(r#","ImportType":"EXISTING_KEY_MATERIAL","KeyMaterialId":"{mid}""#)),
        Ok(Request::Import(import::Request::ImportKeyMaterial {
            import_type: Some(envelope_keystore::ImportType::Existing),
            key_material_id: Some(_),
            ..
        }))
    ));
    assert!(matches!(
        p(""),
        Ok(Request::Import(import::Request::ImportKeyMaterial { import_type: None, description: None, .. }))
    ));
    // A material id names existing material: not with NEW_KEY_MATERIAL.
    assert_eq!(code(p(&format!(r#","ImportType":"NEW_KEY_MATERIAL","KeyMaterialId":"{mid}""#))), "ValidationException");
    assert_eq!(code(p(r#","ImportType":"new_key_material""#)), "ValidationException");
    for bad in ["", "semi;colon", "quote\"", "ünïcode"] {
        let body = serde_json::to_string(bad).unwrap();
        assert_eq!(code(p(&format!(r#","KeyMaterialDescription":{body}"#))), "ValidationException", "{bad:?}");
    }
    assert_eq!(code(p(&format!(r#","KeyMaterialDescription":"{}""#, "x".repeat(257)))), "ValidationException");
    assert_eq!(code(p(&format!(r#","KeyMaterialDescription":"{}""#, "x".repeat(256)))), "ok");
    assert_eq!(
        code(parse_request(
            Operation::DeleteImportedKeyMaterial,
            format!(r#"{{"KeyId":"k","KeyMaterialId":"{mid}"}}"#).as_bytes()
        )),
        "ok"
    );
}

proptest! {
    #[test]
    fn parse_request_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400), op in 0usize..Operation::ALL.len()) {
        let _ = parse_request(Operation::ALL[op], &data);
    }

    #[test]
    fn structured_fuzz_never_panics(key in ".{0,40}", n in any::<i64>(), pt in "[A-Za-z0-9+/=]{0,40}", op in 0usize..Operation::ALL.len()) {
        let body = serde_json::json!({"KeyId": key, "NumberOfBytes": n, "Plaintext": pt, "CiphertextBlob": pt,
            "Limit": n, "Marker": key, "AliasName": key, "TargetKeyId": key, "DestinationKeyId": key});
        let _ = parse_request(Operation::ALL[op], body.to_string().as_bytes());
    }
}

#[test]
fn descriptors() {
    // CloudTrail's readOnly split: reads, lists and cryptographic calls change nothing.
    for op in Operation::ALL {
        let name = op.name();
        let read = ["Describe", "List", "Get", "Lookup"].iter().any(|p| name.starts_with(p));
        assert_eq!(!op.mutates(), read || op.is_data_plane(), "{name}");
        assert_eq!(crate::audit::read_only(name), !op.mutates(), "{name}");
    }
    let data: Vec<&str> = Operation::ALL.iter().filter(|o| o.is_data_plane()).map(|o| o.name()).collect();
    assert_eq!(
        data,
        [
            "Decrypt",
            "DeriveSharedSecret",
            "Encrypt",
            "GenerateDataKey",
            "GenerateDataKeyPair",
            "GenerateDataKeyPairWithoutPlaintext",
            "GenerateDataKeyWithoutPlaintext",
            "GenerateMac",
            "GenerateRandom",
            "ReEncrypt",
            "Sign",
            "Verify",
            "VerifyMac"
        ]
    );
}

#[test]
fn markers_round_trip_and_reject_foreign_ones() {
    let m = encode_marker("k1", "00000000000000000001:abc");
    assert_eq!(decode_marker(&m, "k1").unwrap(), "00000000000000000001:abc");
    assert!(matches!(decode_marker(&m, "a1"), Err(KmsError::InvalidMarker)));
    assert!(matches!(decode_marker("!!!", "k1"), Err(KmsError::InvalidMarker)));
}

#[test]
fn parsing_keeps_the_audit_view_without_secrets() {
    let p = parse(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"a":"b"}}"#).unwrap();
    let crate::audit::Params::Typed(raw) = p.params else { panic!("KMS requests have typed parameters") };
    assert_eq!(serde_json::to_string(&raw).unwrap(), r#"{"encryptionContext":{"a":"b"},"keyId":"k"}"#);
    assert!(raw.plaintext.is_none());
}

#[test]
fn the_audit_search_has_its_own_target_service_and_parser() {
    let op = Operation::from_target("com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents").unwrap();
    assert_eq!((op, op.service(), op.mutates()), (Operation::LookupEvents, "cloudtrail", false));
    assert_eq!(Operation::Decrypt.service(), "kms");
    // Not a KMS operation, and no other CloudTrail operation is served.
    assert!(matches!(Operation::from_target("TrentService.LookupEvents"), Err(KmsError::UnknownOperation(_))));
    assert!(matches!(
        Operation::from_target("com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.Decrypt"),
        Err(KmsError::UnknownOperation(_))
    ));
    assert!(matches!(
        Operation::from_target("com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.CreateTrail"),
        Err(KmsError::UnknownOperation(_))
    ));
    let p = parse(op, br#"{"LookupAttributes":[{"AttributeKey":"EventName","AttributeValue":"Decrypt"}]}"#).unwrap();
    assert!(matches!(p.params, crate::audit::Params::Json(_)));
    assert!(matches!(parse(op, br#"{"MaxResults":0}"#), Err(KmsError::Lookup(_))));
    assert!(matches!(parse(op, b"{"), Err(KmsError::Serialization(_))));
}
