//! `envelope inspect` against etcd set up differently from what the flags say: every mistake an
//! operator makes with TLS, schemes and addresses gives one line with the cause and a hint, not
//! "transport error"; a missing `--etcd` is bad usage (64); and the JSON summary says when
//! staleness is unknown instead of counting 0.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use std::process::{Command, Output};

use envelope_test_support::etcd::{Etcd, make_certs};
use envelope_test_support::net::free_port;

fn inspect(args: &[&str]) -> Output {
    Command::new(common::BIN)
        .args(["inspect", "--allow-empty", "--progress", "never", "--etcd-timeout", "10s"])
        .args(args)
        .output()
        .unwrap()
}

/// The error line of a failed run (exit 1), checked to be a single line.
fn failure(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {err}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("transport error:") || err.contains("; "), "a cause, not just transport error: {err}");
    err
}

fn host_port(url: &str) -> &str {
    url.split_once("://").unwrap().1
}

#[test]
fn tls_and_scheme_mistakes_say_what_is_wrong() {
    let tls = Etcd::start_tls();
    let plain = Etcd::start();
    let t = tls.tls.clone().unwrap();
    let (ca, cert, key) = (t.ca.to_str().unwrap(), t.client_cert.to_str().unwrap(), t.client_key.to_str().unwrap());

    // The right flags work, with and without a scheme.
    assert!(inspect(&["--etcd", &tls.endpoint, "--cacert", ca, "--cert", cert, "--key", key]).status.success());
    assert!(
        inspect(&["--etcd", host_port(&tls.endpoint), "--cacert", ca, "--cert", cert, "--key", key]).status.success()
    );
    assert!(inspect(&["--etcd", host_port(&plain.endpoint)]).status.success());

    // http:// against a TLS etcd.
    let http_url = tls.endpoint.replacen("https://", "http://", 1);
    let err = failure(&inspect(&["--etcd", &http_url]));
    assert!(err.contains("probably serves TLS") && err.contains(&format!("--etcd {}", tls.endpoint)), "{err}");
    // The same without a scheme (http assumed, and the message says so).
    let err = failure(&inspect(&["--etcd", host_port(&tls.endpoint)]));
    assert!(err.contains("probably serves TLS") && err.contains("no scheme"), "{err}");

    // https:// against a plain etcd.
    let https_url = plain.endpoint.replacen("http://", "https://", 1);
    let err = failure(&inspect(&["--etcd", &https_url, "--cacert", ca]));
    assert!(err.contains("does not speak TLS") && err.contains(&format!("--etcd {}", plain.endpoint)), "{err}");

    // A CA that did not sign etcd's certificate.
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_ca, _) = make_certs(other.path());
    let other_ca = other_ca.to_str().unwrap();
    let err = failure(&inspect(&["--etcd", &tls.endpoint, "--cacert", other_ca, "--cert", cert, "--key", key]));
    assert!(err.contains("not signed by the CA in --cacert") && err.contains(other_ca), "{err}");

    // No client certificate for an etcd that requires one.
    let err = failure(&inspect(&["--etcd", &tls.endpoint, "--cacert", ca]));
    assert!(err.contains("requires a client certificate") && err.contains("--cert and --key"), "{err}");

    // A wrong port, and an address without a port.
    let nothing = format!("http://127.0.0.1:{}", free_port());
    let err = failure(&inspect(&["--etcd", &nothing]));
    assert!(err.contains("connection refused") && err.contains("2379"), "{err}");
    let err = failure(&inspect(&["--etcd", "127.0.0.1"]));
    assert!(err.contains("no port") && err.contains("2379"), "{err}");
}

#[test]
fn endpoint_usage_errors_exit_64() {
    let code = |args: &[&str]| {
        let out = inspect(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let (c, err) = code(&[]);
    assert_eq!(c, Some(64), "{err}");
    assert!(err.contains("--etcd is required"), "{err}");
    let (c, err) = code(&["--etcd", "ftp://127.0.0.1:2379"]);
    assert_eq!(c, Some(64), "{err}");
    assert!(err.contains("ftp:// is not supported"), "{err}");
    let (c, err) = code(&["--etcd", "http://"]);
    assert_eq!(c, Some(64), "{err}");

    let out = Command::new(common::BIN).args(["decrypt", "--etcd-key", "/registry/secrets/a/b"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--value-file"));
}

#[tokio::test]
async fn json_summary_says_stale_is_unknown_without_a_current_key_id() {
    let etcd = Etcd::start();
    let ch = tonic::transport::Endpoint::from_shared(etcd.endpoint.clone()).unwrap().connect().await.unwrap();
    let mut kv = envelope_proto::etcdserverpb::kv_client::KvClient::new(ch);
    // A KMS v2 value under key_id "old".
    let env = envelope_inspect::writer::KmsV2Envelope {
        provider_name: "envelope".into(),
        key_id: "old".into(),
        encrypted_dek_source: b"wrapped".to_vec(),
        annotations: Default::default(),
    };
    let key = b"/registry/secrets/a/b";
    let value = envelope_inspect::writer::kms_v2_seed(key, b"k8s\0x", &[7u8; 32], &env).unwrap();
    kv.put(envelope_proto::etcdserverpb::PutRequest { key: key.to_vec(), value, ..Default::default() }).await.unwrap();

    let json = |extra: &[&str]| -> serde_json::Value {
        let mut a = vec!["--etcd", etcd.endpoint.as_str(), "-o", "json"];
        a.extend_from_slice(extra);
        let out = inspect(&a);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = json(&[]);
    assert!(v["summary"]["stale"].is_null(), "{v}");
    assert!(v["summary"]["stale_unknown"].as_str().unwrap().contains("--current-key-id"), "{v}");
    let v = json(&["--current-key-id", "new"]);
    assert_eq!(v["summary"]["stale"], 1, "{v}");
    assert!(v["summary"].get("stale_unknown").is_none(), "{v}");
}
