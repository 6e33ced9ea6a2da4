//! Shell completions, manual pages and `envelope plugin --print-config`, run through the real
//! binary: completions complete in a real bash, the manual pages cover every command, and the
//! printed EncryptionConfiguration is the one a running plugin gives for the same flags.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What bash's programmable completion offers for `words` (the last one being completed), with
/// the script `envelope completions bash` printed loaded into a fresh non-interactive bash.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {script}\n\
         COMP_WORDS=({line})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE='{line}'\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         _envelope envelope '{last}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script = script.display(),
        cword = words.len() - 1,
        last = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = Command::new("bash").args(["--norc", "--noprofile", "-c", &program]).output().unwrap();
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn bash_completion_completes_commands_and_flags() {
    let (code, script, err) = run(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("envelope.bash");
    std::fs::write(&f, &script).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&f).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));

    let commands = bash_completes(&f, &["envelope", ""]);
    for c in ["plugin", "key", "kms", "inspect", "decrypt", "reencrypt", "completions", "man"] {
        assert!(commands.iter().any(|w| w == c), "{c} offered: {commands:?}");
    }
    assert_eq!(bash_completes(&f, &["envelope", "pl"]), ["plugin"]);
    let flags = bash_completes(&f, &["envelope", "plugin", "--print"]);
    assert_eq!(flags, ["--print-config"]);
    let serve = bash_completes(&f, &["envelope", "kms", "se"]);
    assert_eq!(serve, ["serve"]);
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    for shell in ["zsh", "fish"] {
        let (code, script, err) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for word in ["plugin", "reencrypt", "print-config", "store"] {
            assert!(script.contains(word), "{shell} completion names {word}");
        }
    }
    let (code, _, err) = run(&["completions", "tcsh"]);
    assert_eq!(code, 64, "an unknown shell is a usage error");
    assert!(err.contains("bash") && err.contains("zsh") && err.contains("fish"), "lists the shells: {err}");
}

#[test]
fn manual_pages_cover_every_command() {
    let (code, page, err) = run(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH envelope 1"),
        "a roff page: {}",
        &page[..200.min(page.len())]
    );
    assert!(page.contains("envelope\\-plugin(1)") || page.contains("plugin"), "names its commands");

    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man1");
    let (code, out, err) = run(&["man", "--out-dir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(dir.to_str().unwrap()), "{out}");
    for name in
        ["envelope.1", "envelope-plugin.1", "envelope-kms-serve.1", "envelope-key-rotate.1", "envelope-reencrypt.1"]
    {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".TH"), "{name} is a roff page");
    }
    let plugin = std::fs::read_to_string(dir.join("envelope-plugin.1")).unwrap();
    assert!(plugin.contains("print\\-config"), "the plugin page documents --print-config");
    assert!(!dir.join("envelope-help.1").exists(), "no page for the help pseudo-command");
}

/// The lines of an EncryptionConfiguration in a plugin's banner, from `apiVersion:` through the
/// identity provider.
fn config_in_banner(banner: &str) -> String {
    let start = banner.find("apiVersion: apiserver.config.k8s.io/v1").expect("a config in the banner");
    let rest = &banner[start..];
    let end = rest.find("      - identity: {}\n").expect("the identity provider") + "      - identity: {}\n".len();
    rest[..end].to_owned()
}

#[tokio::test]
async fn print_config_is_what_the_running_plugin_prints_and_starts_nothing() {
    let d = tempfile::tempdir().unwrap();
    let second = d.path().join("second.sock");
    let second = second.to_str().unwrap();
    let pairs = ["--key", "old", "--provider-name", "envelope", "--socket", second, "--key", "new"];
    let pairs = [&pairs[..], &["--provider-name", "envelope-new"]].concat();

    // Printed without starting: nothing appears on disk.
    let unused = d.path().join("never");
    let data = unused.join("data");
    let sock = unused.join("kms.sock");
    let mut args = vec!["plugin", "--print-config", "--socket", sock.to_str().unwrap()];
    args.extend(["--data-dir", data.to_str().unwrap()]);
    args.extend(&pairs);
    let (code, printed, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!unused.exists(), "--print-config creates nothing");
    assert!(!std::path::Path::new(second).exists(), "--print-config binds no socket");
    assert!(printed.contains("name: envelope-new"), "{printed}");

    // The same flags, started for real: the banner carries the same configuration (sockets
    // aside, which differ only in the first path).
    let live = d.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let mut plugin = RunningPlugin::start(&live, &pairs).await;
    let banner = plugin.stdout();
    plugin.stop();
    let expected = config_in_banner(&banner).replace(&plugin.socket, sock.to_str().unwrap());
    assert_eq!(printed, expected, "banner:\n{banner}");

    // KMS v1 adds the DEK cache; an invalid flag is refused as configuration (exit 64).
    let (code, v1, err) = run(&["plugin", "--print-config", "--kms-api-version", "v1", "--socket", "/run/e/k.sock"]);
    assert_eq!(code, 0, "{err}");
    assert!(v1.contains("apiVersion: v1\n") && v1.contains("cachesize: 1000"), "{v1}");
    let (code, _, err) = run(&["plugin", "--print-config", "--kms-api-version", "v3"]);
    assert_eq!(code, 64, "{err}");
}
