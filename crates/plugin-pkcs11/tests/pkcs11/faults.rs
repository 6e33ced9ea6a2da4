//! Faults and properties only the pkcs11 backend has.

use std::os::unix::fs::PermissionsExt;

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use envelope_plugin::PluginError;
use envelope_plugin_pkcs11::TokenSelector;
use envelope_test_support::conformance::ready;
use envelope_test_support::softhsm;
use tonic::Code;

use super::{KEY, PIN, TestToken, module, plugin};

async fn token_with_key() -> TestToken {
    let t = tokio::task::spawn_blocking(TestToken::new).await.unwrap();
    t.admin().create_key(KEY).unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_presented_once_and_never_retried() {
    let t = token_with_key().await;
    let wrong = softhsm::write_pin_file(t.dir.path(), "wrong", "0000");
    let mut c = t.config(KEY);
    c.pin_file = wrong.clone();
    let p = plugin(&c);
    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::PermissionDenied(_))), "{:?}", h.error);
    assert!(h.healthz().contains("CKR_PIN_INCORRECT"), "health says why: {}", h.healthz());
    assert!(!h.healthz().contains("0000"), "the PIN is never shown: {}", h.healthz());
    // The token counted one failure.
    let info = {
        let m = module();
        let g = m.enter().unwrap();
        let ctx = g.ctx();
        ctx.get_slots_with_token().unwrap().into_iter().find_map(|s| {
            let i = ctx.get_token_info(s).ok()?;
            (i.label().trim_end() == t.label).then_some(i)
        })
    };
    assert!(info.unwrap().user_pin_count_low(), "SoftHSM2 saw the wrong PIN");
    // Later probes and calls do not present it again: no retry can lock the token.
    for _ in 0..5 {
        let h = p.probe_now().await;
        assert!(h.healthz().contains("not presented again"), "{}", h.healthz());
    }
    let e = p.encrypt_v1(b"x").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "never ready: {e}");
    // A corrected file is read at the next login.
    std::fs::write(&wrong, format!("{PIN}\n")).unwrap();
    assert!(ready(&p).await.starts_with("pkcs11-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_file_readable_by_others_is_refused() {
    let t = token_with_key().await;
    std::fs::set_permissions(&t.pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let h = plugin(&t.config(KEY)).probe_now().await;
    assert!(h.healthz().contains("chmod 600"), "{}", h.healthz());
    assert!(!h.healthz().contains(PIN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_and_missing_key_say_so() {
    let t = token_with_key().await;
    let mut c = t.config(KEY);
    c.token = TokenSelector::Label("no-such-token".into());
    let h = plugin(&c).probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::Unavailable(_))), "{:?}", h.error);
    assert!(h.healthz().contains("no token labelled \"no-such-token\""), "{}", h.healthz());

    let mut c = t.config(KEY);
    c.token = TokenSelector::Serial(t.serial.clone());
    assert!(ready(&plugin(&c)).await.starts_with("pkcs11-"), "found by serial");

    let h = plugin(&t.config("no-such-key")).probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::KeyUnusable(_))), "{:?}", h.error);
    assert!(h.healthz().contains("no AES key labelled \"no-such-key\""), "{}", h.healthz());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_without_decrypt_is_unusable_and_says_which_attribute() {
    let t = token_with_key().await;
    let p = plugin(&t.config(KEY));
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[1u8; 32]).await.unwrap();
    t.admin().set_usage(KEY, true, false).unwrap();
    let h = p.probe_now().await;
    assert!(h.healthz().contains("CKA_DECRYPT is false"), "{}", h.healthz());
    let e = p.decrypt_v2(&ct, &kid, &ann).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("CKA_DECRYPT"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_keys_stay_in_the_token() {
    let t = token_with_key().await;
    let keys = t.admin().list_keys(KEY).unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert!(k.sensitive && !k.extractable && k.value_len == 32 && k.current, "{k:?}");
    assert_eq!(k.generation, 1);
    // Nobody may read the key value, not even the logged-in user.
    let m = module();
    let g = m.enter().unwrap();
    let ctx = g.ctx();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).map(|i| i.label().trim_end() == t.label).unwrap_or(false))
        .unwrap();
    let s = ctx.open_ro_session(slot).unwrap();
    let _ = s.login(UserType::User, Some(&cryptoki::types::AuthPin::new(PIN.into())));
    let h = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Id(k.id.clone()),
        ])
        .unwrap();
    assert_eq!(h.len(), 1);
    let attrs = s.get_attributes(h[0], &[AttributeType::Token, AttributeType::Value]).unwrap();
    assert!(attrs.contains(&Attribute::Token(true)), "{attrs:?}");
    assert!(!attrs.iter().any(|a| matches!(a, Attribute::Value(_))), "the value is readable: {attrs:?}");
    // Leave the module before the admin's calls enter it again (a re-initialisation waiting
    // between two read guards of one thread would deadlock).
    drop(s);
    drop(g);
    // The label is taken: create refuses; rotate adds generation 2.
    assert!(t.admin().create_key(KEY).unwrap_err().to_string().contains("rotate it instead"));
    let r = t.admin().rotate_key(KEY).unwrap();
    assert_eq!(r.generation, 2);
    assert_ne!(r.key_id, k.key_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_old_object_no_longer_decrypts_its_blobs() {
    let t = token_with_key().await;
    let p = plugin(&t.config(KEY));
    let k1 = ready(&p).await;
    let (ct1, _, ann) = p.encrypt_v2(&[7u8; 32]).await.unwrap();
    let admin = t.admin();
    let old = admin.list_keys(KEY).unwrap().remove(0);
    admin.rotate_key(KEY).unwrap();
    let k2 = ready(&p).await;
    assert_ne!(k1, k2);
    assert_eq!(&p.decrypt_v2(&ct1, &k1, &ann).await.unwrap()[..], &[7u8; 32], "old objects keep decrypting");
    admin.destroy(&old.id).unwrap();
    let e = p.decrypt_v2(&ct1, &k1, &ann).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(ready(&p).await == k2, "the current key is unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_login_is_repaired_transparently() {
    let t = token_with_key().await;
    let p = plugin(&t.config(KEY));
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[3u8; 32]).await.unwrap();
    // Another session of this process logs out: every session of the token loses its login.
    {
        let m = module();
        let g = m.enter().unwrap();
        let ctx = g.ctx();
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).map(|i| i.label().trim_end() == t.label).unwrap_or(false))
            .unwrap();
        let s = ctx.open_ro_session(slot).unwrap();
        s.logout().unwrap();
        assert_eq!(
            s.get_session_info().unwrap().session_state(),
            cryptoki::session::SessionState::RoPublic,
            "logged out"
        );
    }
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[3u8; 32]);
    assert_eq!(p.encrypt_v2(&[4u8; 32]).await.unwrap().1, kid);
    assert!(p.probe_now().await.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_two_sessions_serves_many_callers() {
    let t = token_with_key().await;
    let mut c = t.config(KEY);
    c.sessions = 2;
    let p = plugin(&c);
    let kid = ready(&p).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u8 {
        let (p, kid) = (p.clone(), kid.clone());
        tasks.spawn(async move {
            for r in 0..8u8 {
                let dek = [i.wrapping_mul(31) ^ r; 32];
                let (ct, _, ann) = envelope_plugin::deadline::scope(
                    tokio::time::Instant::now() + std::time::Duration::from_secs(10),
                    p.encrypt_v2(&dek),
                )
                .await
                .unwrap();
                assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &dek);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}
