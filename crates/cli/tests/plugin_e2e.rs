//! End-to-end tests: the real `envelope` binary, its real socket, the project's own gRPC client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::*;
use envelope_proto::{v1beta1, v2};
use envelope_test_support::eventually;
use tonic::Code;

fn enc(p: &[u8]) -> v2::EncryptRequest {
    v2::EncryptRequest { plaintext: p.to_vec(), uid: uuid::Uuid::new_v4().to_string() }
}

fn dec(r: &v2::EncryptResponse) -> v2::DecryptRequest {
    v2::DecryptRequest {
        ciphertext: r.ciphertext.clone(),
        uid: uuid::Uuid::new_v4().to_string(),
        key_id: r.key_id.clone(),
        annotations: r.annotations.clone(),
    }
}

fn fqdn(s: &str) -> bool {
    envelope_proto::rules::is_fully_qualified_domain_name(s)
}

#[tokio::test]
async fn v2_contract_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &[]).await;
    let mut c = p.v2().await.unwrap();
    let st = c.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.version, "v2beta1");
    assert_eq!(st.healthz, "ok");
    assert!(!st.key_id.is_empty() && st.key_id.len() <= 1024);

    let seed = [0x5au8; 32];
    let r1 = c.encrypt(enc(&seed)).await.unwrap().into_inner();
    let r2 = c.encrypt(enc(&seed)).await.unwrap().into_inner();
    assert_eq!(r1.key_id, st.key_id, "Encrypt key_id must equal Status key_id");
    assert!(!r1.ciphertext.is_empty() && r1.ciphertext.len() <= 1024);
    assert_ne!(r1.ciphertext, r2.ciphertext, "wraps are randomized");
    let total: usize = r1.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(total <= 32 * 1024);
    assert!(r1.annotations.keys().all(|k| fqdn(k)), "{:?}", r1.annotations.keys());

    let out = c.decrypt(dec(&r1)).await.unwrap().into_inner();
    assert_eq!(out.plaintext, seed);

    // Distinct inputs give distinct outputs and decrypt to themselves.
    let other = c.encrypt(enc(&[1u8; 32])).await.unwrap().into_inner();
    assert_eq!(c.decrypt(dec(&other)).await.unwrap().into_inner().plaintext, [1u8; 32]);

    // Metrics counted the RPCs, and the exposition carries no key_id in clear.
    let (code, body) = p.http_get("/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains(r#"envelope_plugin_rpc_requests_total{api="v2",method="Encrypt",code="OK"} 3"#), "{body}");
    assert!(!body.contains(&st.key_id));
    assert_eq!(p.http_get("/livez").await.0, 200);
    assert_eq!(p.http_get("/readyz").await.0, 200);
}

#[tokio::test]
async fn v2_bad_input_gets_specific_codes() {
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &["--log-format", "json"]).await;
    let mut c = p.v2().await.unwrap();
    let good = c.encrypt(enc(&[9u8; 32])).await.unwrap().into_inner();

    let code_of = |r: Result<tonic::Response<v2::DecryptResponse>, tonic::Status>| r.unwrap_err().code();

    // Empty plaintext.
    assert_eq!(c.encrypt(enc(b"")).await.unwrap_err().code(), Code::InvalidArgument);
    // Oversized plaintext (more than a KMS v2 ciphertext can carry, and more than v1 accepts).
    assert_eq!(c.encrypt(enc(&[0u8; 5000])).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(c.encrypt(enc(&[0u8; 1000])).await.unwrap_err().code(), Code::InvalidArgument);

    // Malformed ciphertexts reach the client as InvalidArgument over the wire (every kind of
    // malformation, for every backend, is the conformance battery's malformed_ciphertext case).
    let mut r = dec(&good);
    r.ciphertext[30] ^= 0x01;
    assert_eq!(code_of(c.decrypt(r).await), Code::InvalidArgument, "flipped");
    for n in [0usize, good.ciphertext.len() - 1] {
        let mut r = dec(&good);
        r.ciphertext.truncate(n);
        assert_eq!(code_of(c.decrypt(r).await), Code::InvalidArgument, "len {n}");
    }
    let mut r = dec(&good);
    r.ciphertext = vec![1u8; 2000];
    assert_eq!(code_of(c.decrypt(r).await), Code::InvalidArgument, "oversized");
    // Another key_id.
    let mut r = dec(&good);
    r.key_id = "envelope-00000000000000000000000000000000".into();
    let st = c.decrypt(r).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("key_id"), "{}", st.message());
    // Empty key_id.
    let mut r = dec(&good);
    r.key_id.clear();
    assert_eq!(code_of(c.decrypt(r).await), Code::InvalidArgument);
    // Altered annotations: changed value, added key, removed key.
    let mut r = dec(&good);
    for v in r.annotations.values_mut() {
        v.push(b'x');
    }
    assert_eq!(code_of(c.decrypt(r).await), Code::InvalidArgument);
    let mut r = dec(&good);
    r.annotations.insert("extra.example.io".into(), b"1".to_vec());
    assert_eq!(code_of(c.decrypt(r).await), Code::InvalidArgument);
    let mut r = dec(&good);
    r.annotations = HashMap::new();
    assert_eq!(code_of(c.decrypt(r).await), Code::InvalidArgument);
    let mut r = dec(&good);
    r.annotations.insert("Not A Domain".into(), b"1".to_vec());
    assert_eq!(code_of(c.decrypt(r).await), Code::InvalidArgument);

    // Nothing above broke the plugin.
    assert_eq!(c.decrypt(dec(&good)).await.unwrap().into_inner().plaintext, [9u8; 32]);
    assert!(!p.stderr().contains("panicked"));

    // Failures are logged (JSON) with the request's uid, and never with the data.
    let mut r = dec(&good);
    r.uid = "uid-to-find-in-the-log".into();
    r.key_id = "wrong".into();
    assert!(c.decrypt(r).await.is_err());
    let logged = eventually(Duration::from_secs(3), || async { p.stderr().contains("uid-to-find-in-the-log") }).await;
    assert!(logged, "{}", p.stderr());
    let log = p.stderr();
    let line = log.lines().find(|l| l.contains("uid-to-find-in-the-log")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(v["method"], "Decrypt");
    assert_eq!(v["code"], "InvalidArgument");
    assert!(!log.contains(&hex::encode(&good.ciphertext[..16])), "no ciphertext in logs");
}

#[tokio::test]
async fn v1beta1_version_ping_and_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &[]).await;
    let mut c = p.v1().await.unwrap();
    let v = c.version(v1beta1::VersionRequest { version: "v1beta1".into() }).await.unwrap().into_inner();
    assert_eq!(v.version, "v1beta1");
    assert_eq!(v.runtime_name, "envelope");

    let ping = c
        .encrypt(v1beta1::EncryptRequest { version: "v1beta1".into(), plain: b"ping".to_vec() })
        .await
        .unwrap()
        .into_inner();
    let back = c
        .decrypt(v1beta1::DecryptRequest { version: "v1beta1".into(), cipher: ping.cipher })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.plain, b"ping");

    let dek = [3u8; 32];
    let e = c
        .encrypt(v1beta1::EncryptRequest { version: "v1beta1".into(), plain: dek.to_vec() })
        .await
        .unwrap()
        .into_inner();
    assert!(e.cipher.len() <= 65535);
    let back = c
        .decrypt(v1beta1::DecryptRequest { version: "v1beta1".into(), cipher: e.cipher.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.plain, dek);

    // Wrong version field.
    for bad in ["", "v1", "v2"] {
        let err = c.encrypt(v1beta1::EncryptRequest { version: bad.into(), plain: dek.to_vec() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().contains("version"));
        let err =
            c.decrypt(v1beta1::DecryptRequest { version: bad.into(), cipher: e.cipher.clone() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    assert_eq!(
        c.version(v1beta1::VersionRequest { version: "v9".into() }).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // A v1 ciphertext is not a v2 ciphertext and vice versa (the API is bound into the wrap).
    let mut c2 = p.v2().await.unwrap();
    let st = c2.status(v2::StatusRequest {}).await.unwrap().into_inner();
    let r = v2::DecryptRequest {
        ciphertext: e.cipher.clone(),
        uid: "u".into(),
        key_id: st.key_id,
        annotations: HashMap::new(),
    };
    assert_eq!(c2.decrypt(r).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn rotation_changes_key_id_and_old_data_decrypts() {
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &[]).await;
    let mut c = p.v2().await.unwrap();
    let before = c.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id;
    let old = c.encrypt(enc(&[7u8; 32])).await.unwrap().into_inner();
    p.key_cmd(&["rotate", "kubernetes"]);
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c.clone();
            let before = before.clone();
            async move { c.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id != before }
        })
        .await,
        "key_id did not change after rotation"
    );
    let seen = c.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id;
    let new = c.encrypt(enc(&[8u8; 32])).await.unwrap().into_inner();
    assert_eq!(new.key_id, seen);
    assert_ne!(new.key_id, before);
    assert_eq!(c.decrypt(dec(&old)).await.unwrap().into_inner().plaintext, [7u8; 32]);
    assert_eq!(c.decrypt(dec(&new)).await.unwrap().into_inner().plaintext, [8u8; 32]);
    // The CLI reports the same key_id the plugin does.
    let out = p.key_cmd(&["describe", "kubernetes", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kms_key_id"], new.key_id);
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn disable_makes_unhealthy_and_enable_restores() {
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &[]).await;
    let mut c = p.v2().await.unwrap();
    let key_id = c.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id;
    let wrapped = c.encrypt(enc(&[4u8; 32])).await.unwrap().into_inner();
    p.key_cmd(&["disable", "kubernetes"]);
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c.clone();
            async move { c.status(v2::StatusRequest {}).await.unwrap().into_inner().healthz != "ok" }
        })
        .await
    );
    let st = c.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert!(st.healthz.contains("disabled"), "{}", st.healthz);
    assert_eq!(st.key_id, key_id, "the last good key_id survives");
    let e = c.encrypt(enc(&[4u8; 32])).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("disabled"), "{}", e.message());
    assert_eq!(c.decrypt(dec(&wrapped)).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(p.http_get("/livez").await.0, 200);
    let (code, body) = p.http_get("/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("disabled"));

    p.key_cmd(&["enable", "kubernetes"]);
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c.clone();
            async move { c.status(v2::StatusRequest {}).await.unwrap().into_inner().healthz == "ok" }
        })
        .await
    );
    assert_eq!(c.decrypt(dec(&wrapped)).await.unwrap().into_inner().plaintext, [4u8; 32]);
    assert_eq!(p.http_get("/readyz").await.0, 200);
}

#[tokio::test]
async fn restart_keeps_data_decryptable_and_key_id_stable() {
    let d = tempfile::tempdir().unwrap();
    let mut p = RunningPlugin::start(d.path(), &[]).await;
    let mut c = p.v2().await.unwrap();
    let w = c.encrypt(enc(&[2u8; 32])).await.unwrap().into_inner();
    assert_eq!(p.stop(), Some(0));
    assert!(!std::path::Path::new(&p.socket).exists(), "socket removed on clean shutdown");
    let p2 = RunningPlugin::start(d.path(), &[]).await;
    let mut c2 = p2.v2().await.unwrap();
    assert_eq!(c2.status(v2::StatusRequest {}).await.unwrap().into_inner().key_id, w.key_id);
    assert_eq!(c2.decrypt(dec(&w)).await.unwrap().into_inner().plaintext, [2u8; 32]);
}

#[tokio::test]
async fn socket_modes_stale_and_live_sockets() {
    let d = tempfile::tempdir().unwrap();
    // A stale socket file (nobody listening) is replaced.
    let sock = d.path().join("run/kms/kms.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
    let sock_s = sock.to_string_lossy().into_owned();
    let p = RunningPlugin::start_with(d.path(), &d.path().join("data"), &sock_s, &[]).await;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    // A second plugin on the same live socket refuses to start, and leaves the socket alone.
    let out = std::process::Command::new(BIN)
        .args(["plugin", "--socket", &sock_s, "--http-addr", "off", "--data-dir"])
        .arg(d.path().join("data2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = p.v2().await.unwrap();
    assert!(c.status(v2::StatusRequest {}).await.is_ok(), "the first plugin still serves");
    drop(p);

    // Configurable mode.
    let d2 = tempfile::tempdir().unwrap();
    let p2 = RunningPlugin::start(d2.path(), &["--socket-mode", "0660"]).await;
    assert_eq!(std::fs::metadata(&p2.socket).unwrap().permissions().mode() & 0o777, 0o660);
}

#[tokio::test]
async fn abstract_socket() {
    let d = tempfile::tempdir().unwrap();
    let name = format!("@envelope-e2e-{}", std::process::id());
    let p = RunningPlugin::start_with(d.path(), &d.path().join("data"), &name, &[]).await;
    let mut c = p.v2().await.unwrap();
    let r = c.encrypt(enc(&[1u8; 32])).await.unwrap().into_inner();
    assert_eq!(c.decrypt(dec(&r)).await.unwrap().into_inner().plaintext, [1u8; 32]);
    assert!(p.stdout().contains(&format!("unix:///{name}")), "{}", p.stdout());
}

#[tokio::test]
async fn main_job_prints_socket_and_encryption_configuration() {
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &["--provider-name", "my-kms"]).await;
    let out = p.stdout();
    assert!(out.contains(&p.socket), "{out}");
    assert!(out.contains("kind: EncryptionConfiguration"));
    assert!(out.contains("name: my-kms"));
    assert!(out.contains(&format!("endpoint: unix://{}", p.socket)));
    // Data directory and key were created on first start; root key is private.
    let root = p.data_dir.join("root.key");
    assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&p.data_dir).unwrap().permissions().mode() & 0o777, 0o700);
}

#[tokio::test]
async fn sigterm_during_load_finishes_in_flight_requests() {
    let d = tempfile::tempdir().unwrap();
    let mut p = RunningPlugin::start(d.path(), &["--shutdown-grace", "5s"]).await;
    let c = p.v2().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed_after) = (0u32, 0u32);
            for _ in 0..400 {
                match c.encrypt(enc(&[6u8; 32])).await {
                    Ok(r) => {
                        assert!(!r.into_inner().ciphertext.is_empty());
                        ok += 1;
                    }
                    Err(s) => {
                        // After shutdown starts new streams are refused; never a wrong answer.
                        assert!(matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled), "{s:?}");
                        failed_after += 1;
                        break;
                    }
                }
            }
            (ok, failed_after)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let code = tokio::task::spawn_blocking(move || {
        let c = p.stop();
        (c, p)
    })
    .await
    .unwrap();
    let mut total_ok = 0;
    for t in tasks {
        total_ok += t.await.unwrap().0;
    }
    assert!(total_ok > 0);
    assert_eq!(code.0, Some(0), "clean exit after SIGTERM");
    assert!(!std::path::Path::new(&code.1.socket).exists());
    assert!(code.1.stderr().contains("received SIGTERM"));
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("kms.sock");
    let cfg = d.path().join("bad.yaml");
    std::fs::write(&cfg, "socket-mode: nonsense\n").unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec!["--socket-mode".into(), "999".into()],
        vec!["--status-version".into(), "v3".into()],
        vec!["--http-addr".into(), "localhost".into()],
        vec!["--config".into(), cfg.to_string_lossy().into_owned()],
        vec!["--config".into(), d.path().join("missing.yaml").to_string_lossy().into_owned()],
        vec!["--no-such-flag".into()],
    ];
    for extra in cases {
        let out = std::process::Command::new(BIN)
            .args(["plugin", "--socket"])
            .arg(&sock)
            .arg("--data-dir")
            .arg(d.path().join("data"))
            .args(&extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
        assert!(!sock.exists(), "nothing may be bound on bad config");
        assert!(!d.path().join("data").exists(), "nothing may be created on bad config");
    }
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["plugin", "--help"],
        vec!["key", "--help"],
        vec!["key", "create", "--help"],
        vec!["key", "rotate", "--help"],
        vec!["bench", "plugin", "--help"],
    ] {
        let out = std::process::Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}

async fn v2_at(
    socket: &str,
) -> v2::key_management_service_client::KeyManagementServiceClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("unix://{socket}")).unwrap().connect().await.unwrap();
    v2::key_management_service_client::KeyManagementServiceClient::new(ch)
}

// Multi-threaded: the clients' connections must answer the server's shutdown while the test
// thread blocks in `stop()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_keys_in_one_process_each_with_its_own_health() {
    let d = tempfile::tempdir().unwrap();
    let second = d.path().join("second.sock").to_string_lossy().into_owned();
    // The first --socket (kms.sock, given by the helper) serves alpha, the second serves beta.
    let mut p = RunningPlugin::start(
        d.path(),
        &[
            "--key",
            "alpha",
            "--provider-name",
            "envelope",
            "--socket",
            &second,
            "--key",
            "beta",
            "--provider-name",
            "envelope-beta",
        ],
    )
    .await;
    let mut a = p.v2().await.unwrap();
    let mut b = v2_at(&second).await;
    let sa = a.status(v2::StatusRequest {}).await.unwrap().into_inner();
    let sb = b.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((sa.healthz.as_str(), sb.healthz.as_str()), ("ok", "ok"));
    assert_ne!(sa.key_id, sb.key_id, "each instance reports its own key");

    // Each socket wraps with its own key. A ciphertext names its key, so (as after an alias
    // moves) any instance of the same store unwraps it.
    let ra = a.encrypt(enc(&[7u8; 32])).await.unwrap().into_inner();
    assert_eq!(ra.key_id, sa.key_id);
    assert_eq!(a.decrypt(dec(&ra)).await.unwrap().into_inner().plaintext, [7u8; 32]);
    assert_eq!(b.decrypt(dec(&ra)).await.unwrap().into_inner().plaintext, [7u8; 32]);
    let rb = b.encrypt(enc(&[8u8; 32])).await.unwrap().into_inner();
    assert_eq!(rb.key_id, sb.key_id);

    // The printed EncryptionConfiguration lists both providers, in order.
    let out = p.stdout();
    let first = out.find("name: envelope\n").unwrap_or_else(|| panic!("{out}"));
    let then = out.find("name: envelope-beta\n").unwrap_or_else(|| panic!("{out}"));
    assert!(first < then && out.contains(&format!("endpoint: unix://{second}")), "{out}");

    // Metrics carry the instance.
    let (_, body) = p.http_get("/metrics").await;
    let label_a = format!(r#"socket="{}",key="alpha""#, p.socket);
    let label_b = format!(r#"socket="{second}",key="beta""#);
    assert!(body.contains(&format!("envelope_plugin_healthy{{{label_a}}} 1")), "{body}");
    assert!(
        body.contains(&format!(
            r#"envelope_plugin_rpc_requests_total{{{label_b},api="v2",method="Encrypt",code="OK"}} 1"#
        )),
        "{body}"
    );

    // Disabling beta makes that instance alone unhealthy; /readyz says which, /livez stays up.
    p.key_cmd(&["disable", "beta"]);
    let unhealthy = eventually(Duration::from_secs(10), || {
        let mut b = b.clone();
        async move { b.status(v2::StatusRequest {}).await.map(|s| s.into_inner().healthz != "ok").unwrap_or(false) }
    })
    .await;
    assert!(unhealthy);
    assert_eq!(a.status(v2::StatusRequest {}).await.unwrap().into_inner().healthz, "ok");
    assert_eq!(b.encrypt(enc(&[1u8; 32])).await.unwrap_err().code(), Code::FailedPrecondition);
    assert!(a.encrypt(enc(&[1u8; 32])).await.is_ok());
    let (code, body) = p.http_get("/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains(&format!("[+] {} (alpha) ok", p.socket)), "{body}");
    assert!(body.contains(&format!("[-] {second} (beta): ")) && body.contains("disabled"), "{body}");
    assert_eq!(p.http_get("/livez").await.0, 200);

    p.key_cmd(&["enable", "beta"]);
    let ready = eventually(Duration::from_secs(10), || async { p.http_get("/readyz").await.0 == 200 }).await;
    assert!(ready);

    assert_eq!(p.stop(), Some(0));
    assert!(
        !std::path::Path::new(&p.socket).exists() && !std::path::Path::new(&second).exists(),
        "sockets removed on exit"
    );
}

#[tokio::test]
async fn mismatched_key_socket_pairs_are_a_configuration_error() {
    let d = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["plugin", "--key", "a", "--key", "b", "--socket"])
        .arg(d.path().join("one.sock"))
        .arg("--data-dir")
        .arg(d.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("one --socket per --key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
