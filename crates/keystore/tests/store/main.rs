//! The key store against its engines: the store battery on SQLite and on a real PostgreSQL
//! (Debian's, a throwaway cluster per test), then what only a shared database has: replicas
//! kept coherent, background work elected once, TLS, and migrations between engines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod battery;
mod migrate;
mod replicas;
mod subject;
mod tls;

/// Instantiates every battery case for one engine.
macro_rules! battery {
    ($subject:expr) => {
        #[test]
        fn create_encrypt_decrypt_with_context() {
            crate::battery::create_encrypt_decrypt_with_context(&$subject());
        }
        #[test]
        fn rotation_keeps_old_versions_decryptable() {
            crate::battery::rotation_keeps_old_versions_decryptable(&$subject());
        }
        #[test]
        fn disabled_key_refuses_both_directions_until_enabled() {
            crate::battery::disabled_key_refuses_both_directions_until_enabled(&$subject());
        }
        #[test]
        fn changes_from_another_handle_are_seen_after_refresh() {
            crate::battery::changes_from_another_handle_are_seen_after_refresh(&$subject());
        }
        #[test]
        fn duplicate_alias_and_bad_input() {
            crate::battery::duplicate_alias_and_bad_input(&$subject());
        }
        #[test]
        fn alias_create_update_delete_and_list() {
            crate::battery::alias_create_update_delete_and_list(&$subject());
        }
        #[test]
        fn scheduled_deletion_cancel_and_purge() {
            crate::battery::scheduled_deletion_cancel_and_purge(&$subject());
        }
        #[test]
        fn grants_idempotency_limit_and_purge() {
            crate::battery::grants_idempotency_limit_and_purge(&$subject());
        }
        #[test]
        fn automatic_rotation_tags_policy_and_description() {
            crate::battery::automatic_rotation_tags_policy_and_description(&$subject());
        }
        #[test]
        fn imported_material_lifecycle() {
            crate::battery::imported_material_lifecycle(&$subject());
        }
        #[test]
        fn imported_material_rotation() {
            crate::battery::imported_material_rotation(&$subject());
        }
        #[test]
        fn concurrent_guarded_alias_updates_let_exactly_one_win() {
            crate::battery::concurrent_guarded_alias_updates_let_exactly_one_win(&$subject());
        }
        #[test]
        fn concurrent_rotations_and_tags_lose_no_update() {
            crate::battery::concurrent_rotations_and_tags_lose_no_update(&$subject());
        }
        #[test]
        fn limits_hold_across_concurrent_handles() {
            crate::battery::limits_hold_across_concurrent_handles(&$subject());
        }
        #[test]
        fn automatic_rotation_runs_once_from_several_handles() {
            crate::battery::automatic_rotation_runs_once_from_several_handles(&$subject());
        }
        #[test]
        fn another_root_key_opens_nothing() {
            crate::battery::another_root_key_opens_nothing(&$subject());
        }
        #[test]
        fn hmac_keys_keep_their_spec_and_material() {
            crate::battery::hmac_keys_keep_their_spec_and_material(&$subject());
        }
        #[test]
        fn imported_hmac_and_key_pair_material() {
            crate::battery::imported_hmac_and_key_pair_material(&$subject());
        }
        #[test]
        fn asymmetric_keys_keep_their_usage_and_key_pair() {
            crate::battery::asymmetric_keys_keep_their_usage_and_key_pair(&$subject());
        }
    };
}

mod sqlite {
    battery!(crate::subject::Sqlite::new);
}

mod postgres {
    battery!(crate::subject::Pg::new);
}
