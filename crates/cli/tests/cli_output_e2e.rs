//! What the binary prints, beyond each command's own job: a closed stdout pipe ends a command
//! quietly (no Broken pipe panic), help states defaults, tables line up, errors say their subject
//! once, logs hold no Rust `Debug` renderings, and printouts do what they claim.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use envelope_test_support::eventually;
use envelope_test_support::net::free_port;

/// Runs `envelope args` with stdout a pipe whose reading end is already closed, as in
/// `envelope key list | head -0` once head has exited.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN).args(args).stdin(Stdio::null()).stdout(writer).stderr(Stdio::piped()).output().unwrap()
}

#[test]
fn a_closed_stdout_pipe_ends_commands_quietly() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let data = data.to_str().unwrap();
    key_cmd(std::path::Path::new(data), &["create", "kubernetes"]);
    for args in [
        vec!["key", "list", "--data-dir", data],
        vec!["key", "list", "-o", "json", "--data-dir", data],
        vec!["key", "describe", "kubernetes", "--data-dir", data],
        vec!["--help"],
        vec!["plugin", "--help"],
    ] {
        let out = with_closed_stdout(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: nothing on stderr: {err}");
    }
    // A value decrypted into a closed pipe: the same.
    let f = d.path().join("plain.json");
    std::fs::write(&f, br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"a"}}"#).unwrap();
    let out =
        with_closed_stdout(&["decrypt", "--etcd-key", "/registry/secrets/d/a", "--value-file", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_server_keeps_serving_when_its_stdout_reader_goes_away() {
    // `envelope plugin | head -3`: the banner cannot be written, but kube-apiserver's plugin must
    // not stop because a terminal pipe closed.
    let d = tempfile::tempdir().unwrap();
    let socket = d.path().join("kms.sock");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(BIN)
        .args(["plugin", "--http-addr", "off", "--data-dir"])
        .arg(d.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the plugin ended");
        assert!(std::time::Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The banner comes after the socket is bound: give it time to fail, then check we still serve.
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "the plugin must keep serving");
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok(), "and accept connections");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("cannot write to standard output").count(), 1, "reported once: {err}");
}

#[test]
fn plugin_help_shows_defaults_like_kms_serve() {
    // Whitespace collapsed: a default may be wrapped onto the next line ("[default:\n   embedded]").
    let help = |args: &[&str]| {
        let text = String::from_utf8(Command::new(BIN).args(args).output().unwrap().stdout).unwrap();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let kms = help(&["kms", "serve", "--help"]);
    assert!(kms.contains("[default: 127.0.0.1:4599]"), "{kms}");
    let plugin = help(&["plugin", "--help"]);
    for d in [
        "[default: 0600]",
        "[default: 127.0.0.1:8423]",
        "[default: embedded]",
        "[default: v2beta1]",
        "[default: 10s]",
        "[default: envelope]",
        "[default: v2]",
        "[default: text]",
        "[default: info]",
        "[default: 64]",
    ] {
        assert!(plugin.contains(d), "{d} missing:\n{plugin}");
    }
}

#[test]
fn key_list_columns_line_up() {
    let d = tempfile::tempdir().unwrap();
    key_cmd(d.path(), &["create", "kubernetes"]);
    key_cmd(d.path(), &["create", "other"]);
    key_cmd(d.path(), &["disable", "other"]);
    key_cmd(d.path(), &["rotate", "kubernetes"]);
    let out = String::from_utf8(key_cmd(d.path(), &["list"]).stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    // Every column starts where its header does.
    let header = lines[0];
    for col in ["STATE", "KMS KEY_ID", "ALIASES"] {
        let at = header.find(col).unwrap();
        for l in &lines[1..] {
            let before = &l[..at];
            assert!(before.ends_with("  ") && !l[at..].starts_with(' '), "{col} misaligned:\n{out}");
        }
    }
    // VERSIONS is right-aligned under its header.
    let end = header.find("VERSIONS").unwrap() + "VERSIONS".len();
    for l in &lines[1..] {
        assert!(l.as_bytes()[end - 1].is_ascii_digit() && l.as_bytes()[end] == b' ', "VERSIONS:\n{out}");
    }
}

#[tokio::test]
async fn errors_name_their_subject_once() {
    // A socket in use by a running plugin.
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &[]).await;
    let out = Command::new(BIN)
        .args(["plugin", "--http-addr", "off", "--socket", &p.socket, "--data-dir"])
        .arg(d.path().join("data2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("envelope: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("is in use"), "{err}");
    assert_eq!(line.matches(&p.socket).count(), 1, "the socket named once: {line}");

    // A key server configuration error says "invalid configuration" once.
    let out = Command::new(BIN)
        .args(["kms", "serve", "--http-addr", "off", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(d.path().join("kms"))
        .arg("--seed")
        .arg(d.path().join("missing-seed.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert_eq!(err.matches("invalid configuration").count(), 1, "{err}");

    // A passphrase store is not "no key store (no root.key)".
    let pass = d.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let kms = d.path().join("kms-pass");
    let mut server = Command::new(BIN)
        .args(["kms", "serve", "--http-addr", "off", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(&kms)
        .arg("--root-passphrase-file")
        .arg(&pass)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || async { kms.join("root.passphrase").exists() }).await);
    let _ = server.kill();
    let _ = server.wait();
    let out = Command::new(BIN).args(["key", "list", "--data-dir"]).arg(&kms).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("passphrase") && !err.contains("no root.key"), "{err}");
}

#[tokio::test]
async fn logs_hold_no_rust_debug_values() {
    let d = tempfile::tempdir().unwrap();
    let mut p = RunningPlugin::start(d.path(), &["--log-format", "json"]).await;
    p.key_cmd(&["rotate", "kubernetes"]);
    let rotated =
        eventually(Duration::from_secs(5), || async { p.stderr().matches("key_id is now current").count() >= 2 });
    assert!(rotated.await, "{}", p.stderr());
    p.stop();
    let log = p.stderr();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for (k, f) in v.as_object().unwrap() {
            let s = f.as_str().map(str::to_owned).unwrap_or_else(|| f.to_string());
            assert!(!s.starts_with("Some(") && s != "None", "{k}={s} in {line}");
        }
    }
    assert!(log.contains("\"previous\""), "the rotation names the previous key_id: {log}");
}

#[test]
fn generated_credentials_printout_is_a_shell_snippet() {
    let d = tempfile::tempdir().unwrap();
    let mut server = Command::new(BIN)
        .args(["kms", "serve", "--http-addr", "off", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(d.path().join("kms"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut text = String::new();
    {
        use std::io::BufRead;
        let stdout = server.stdout.take().unwrap();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("try: aws");
            text.push_str(&line);
            text.push('\n');
            if done {
                break;
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    // The indented block after "generated an access key": paste it into a shell.
    let block: String = text
        .lines()
        .skip_while(|l| !l.contains("generated an access key"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(block.contains("export AWS_ACCESS_KEY_ID="), "{text}");
    let out = Command::new("sh").args(["-eu", "-c"]).arg(format!("{block}\nenv")).output().unwrap();
    assert!(out.status.success(), "not a shell snippet:\n{block}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("AWS_DEFAULT_REGION=us-east-1"));
}

#[tokio::test]
async fn aws_banner_names_the_endpoint_from_the_environment() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("kms.sock");
    let mut child = Command::new(BIN)
        .args(["plugin", "--backend", "aws", "--key", "alias/k", "--region", "us-east-1", "--http-addr", "off"])
        .arg("--socket")
        .arg(&sock)
        .arg("--data-dir")
        .arg(d.path().join("unused"))
        .env("AWS_ENDPOINT_URL_KMS", format!("http://127.0.0.1:{}", free_port()))
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdout(std::fs::File::create(d.path().join("out")).unwrap())
        .stderr(std::fs::File::create(d.path().join("err")).unwrap())
        .spawn()
        .unwrap();
    let out = d.path().join("out");
    let printed = eventually(Duration::from_secs(20), || async {
        std::fs::read_to_string(&out).unwrap_or_default().contains("identity: {}")
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(printed, "{text}\n{}", std::fs::read_to_string(d.path().join("err")).unwrap_or_default());
    assert!(text.contains("(from AWS_ENDPOINT_URL_KMS)") && !text.contains("default endpoint"), "{text}");
}
