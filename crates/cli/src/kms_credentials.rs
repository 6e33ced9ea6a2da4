//! `envelope kms credentials add|list|rotate|remove`: edits of the key server's credentials
//! file (`envelope_kms_server::credentials`: atomic rewrite, 0600, an edit lock). A running
//! server reloads the file when it changes.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use envelope_kms_server::credentials::CredentialsFile;
use envelope_kms_server::policy;

/// Options of `envelope kms credentials`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  envelope kms credentials add --principal arn:aws:iam::111122223333:user/ci --expires-in 12h\n  \
    envelope kms credentials list\n  envelope kms credentials rotate AKIA... --grace 1h\n  envelope kms credentials remove AKIA...\n\
    The secret of a new access key is printed once, as shell exports; a running `envelope kms serve` \
    picks up every change within a second (or at once on SIGHUP)."
)]
pub struct CredentialsArgs {
    /// Data directory of the key server (its credentials file is <DIR>/credentials.yaml).
    #[arg(long, env = "ENVELOPE_KMS_DATA_DIR", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The credentials file, if not <data-dir>/credentials.yaml (`kms serve --credentials`).
    #[arg(long, env = "ENVELOPE_KMS_CREDENTIALS", value_name = "FILE", global = true)]
    pub credentials: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CredentialsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Create an access key for a principal and print it once.
    Add(AddArgs),
    /// List the access keys (ids, principals, expiry, policy; never secrets).
    List(ListArgs),
    /// Replace an access key by a new one for the same principal and policy.
    Rotate(RotateArgs),
    /// Remove an access key (the last one stays: the server needs one).
    Remove(RemoveArgs),
}

/// Options of `envelope kms credentials add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The principal the key authenticates: arn:aws:iam::ACCOUNT:user/NAME (or role/NAME).
    #[arg(long, value_name = "ARN")]
    pub principal: String,
    /// Identity policy (a JSON file) restricting what the principal may do.
    #[arg(long, value_name = "FILE", conflicts_with = "admin")]
    pub policy_file: Option<PathBuf>,
    /// Give the principal the administrator identity policy (every kms:* action).
    #[arg(long)]
    pub admin: bool,
    /// The key stops being accepted at this time (RFC 3339, e.g. 2026-12-31T23:59:59Z).
    #[arg(long, value_name = "TIME", conflicts_with = "expires_in")]
    pub expires: Option<String>,
    /// The key stops being accepted after this long (e.g. 30m, 12h, 7d): for short-lived clients.
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
}

/// Options of `envelope kms credentials list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON object per access key instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `envelope kms credentials rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The access key id to replace.
    #[arg(value_name = "ACCESS_KEY_ID")]
    pub access_key_id: String,
    /// Keep the old key working this long (e.g. 1h) so clients can switch; default: removed now.
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub grace: String,
}

/// Options of `envelope kms credentials remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The access key id to remove.
    #[arg(value_name = "ACCESS_KEY_ID")]
    pub access_key_id: String,
}

pub fn run(args: CredentialsArgs) -> Result<()> {
    let path = args.credentials.unwrap_or_else(|| {
        args.data_dir
            .unwrap_or_else(|| crate::config::default_data_dir().join("kms"))
            .join(crate::kms_cmd::CREDENTIALS_FILE)
    });
    if !path.is_file() {
        bail!(
            "no credentials file at {} (`envelope kms serve` writes one on first start; or give --credentials)",
            path.display()
        );
    }
    let fail = |e: envelope_kms_server::KmsError| anyhow!("{e}");
    match args.command {
        CredentialsCommand::Add(a) => {
            let policy = if a.admin {
                Some(policy::ADMIN_IDENTITY_POLICY.to_string())
            } else if let Some(f) = &a.policy_file {
                Some(std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?)
            } else {
                None
            };
            let expires = match (&a.expires, &a.expires_in) {
                (Some(t), _) => Some(
                    humantime::parse_rfc3339_weak(t)
                        .with_context(|| format!("--expires {t:?}: not an RFC 3339 time (2026-12-31T23:59:59Z)"))?,
                ),
                (None, Some(d)) => Some(SystemTime::now() + duration("--expires-in", d)?),
                (None, None) => None,
            };
            let (akid, secret) =
                CredentialsFile::edit(&path, |f| f.add(&a.principal, policy, expires)).map_err(fail)?;
            println!("# access key for {} (the secret is shown once)", a.principal);
            println!("export AWS_ACCESS_KEY_ID={akid}");
            println!("export AWS_SECRET_ACCESS_KEY={}", secret.as_str());
            if let Some(t) = expires {
                println!("# expires {}", humantime::format_rfc3339_seconds(t));
            }
        }
        CredentialsCommand::List(a) => {
            let file = CredentialsFile::load(&path).map_err(fail)?;
            let now = SystemTime::now();
            for e in &file.entries {
                let policy = match e.policy_text() {
                    None => "none (unrestricted)",
                    Some(p) if p == policy::ADMIN_IDENTITY_POLICY => "administrator",
                    Some(_) => "custom",
                };
                let state = if e.expired(now) { "expired" } else { "active" };
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"AccessKeyId": e.access_key_id, "Principal": e.principal,
                            "Expires": e.expires, "Status": state, "Policy": e.policy_text()})
                    );
                } else {
                    let expires = e.expires.as_deref().unwrap_or("never");
                    println!("{:<24} {:<8} {:<22} {:<20} {}", e.access_key_id, state, expires, policy, e.principal);
                }
            }
        }
        CredentialsCommand::Rotate(a) => {
            let grace = duration("--grace", &a.grace)?;
            let (akid, secret) =
                CredentialsFile::edit(&path, |f| f.rotate(&a.access_key_id, grace, SystemTime::now())).map_err(fail)?;
            println!("# replaces {} (the secret is shown once)", a.access_key_id);
            println!("export AWS_ACCESS_KEY_ID={akid}");
            println!("export AWS_SECRET_ACCESS_KEY={}", secret.as_str());
            if grace.is_zero() {
                println!("# {} is removed", a.access_key_id);
            } else {
                println!("# {} keeps working for {}", a.access_key_id, humantime::format_duration(grace));
            }
        }
        CredentialsCommand::Remove(a) => {
            CredentialsFile::edit(&path, |f| f.remove(&a.access_key_id)).map_err(fail)?;
            println!("removed {}", a.access_key_id);
        }
    }
    Ok(())
}

fn duration(flag: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text.trim()).with_context(|| format!("{flag} {text:?}: not a duration (30m, 12h, 7d)"))
}
