//! `envelope key ...`: manage keys of the embedded key store.

use std::process::ExitCode;

use anyhow::{Context, Result};
use envelope_keystore::{KeyMetadata, KeyRef, KeyStore};
use envelope_plugin::backend::embedded_key_id;

use crate::cli::{KeyArgs, KeyCommand};

pub fn run(args: KeyArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envelope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: KeyArgs) -> Result<()> {
    let dir = args.data_dir.clone().unwrap_or_else(crate::config::default_data_dir);
    // Only `create` may start a new store; every other command needs the existing one, so a
    // mistyped --data-dir is an error rather than a fresh, empty store.
    let store = match args.command {
        KeyCommand::Create { .. } => KeyStore::open(&dir),
        _ => KeyStore::open_existing(&dir),
    }
    .with_context(|| format!("cannot open the key store in {}", dir.display()))?;
    let json = args.output == "json";
    match args.command {
        KeyCommand::Create { name, description } => {
            let k = store.create_key(Some(&name), &description)?;
            show(&k, json)
        }
        KeyCommand::List => {
            let keys = store.list()?;
            if json {
                let v: Vec<_> = keys.iter().map(to_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<36}  {:<16}  {:>8}  {:<42}  ALIASES", "KEY ID", "STATE", "VERSIONS", "KMS KEY_ID");
                for k in &keys {
                    println!(
                        "{:<36}  {:<16}  {:>8}  {:<42}  {}",
                        k.key_id,
                        k.state,
                        k.versions.len(),
                        kms_key_id(k),
                        k.aliases.join(",")
                    );
                }
            }
            Ok(())
        }
        KeyCommand::Describe { key } => show(&store.describe(&KeyRef::parse(&key)?)?, json),
        KeyCommand::Rotate { key } => show(&store.rotate(&KeyRef::parse(&key)?)?, json),
        KeyCommand::Disable { key } => show(&store.set_enabled(&KeyRef::parse(&key)?, false)?, json),
        KeyCommand::Enable { key } => show(&store.set_enabled(&KeyRef::parse(&key)?, true)?, json),
    }
}

/// The KMS v2 key_id the plugin reports for this key's current version.
fn kms_key_id(k: &KeyMetadata) -> String {
    let (Ok(u), Ok(m)) = (uuid::Uuid::parse_str(&k.key_id), hex::decode(&k.current_material_id)) else {
        return String::new();
    };
    let Ok(m) = <[u8; 32]>::try_from(m.as_slice()) else { return String::new() };
    embedded_key_id(u.as_bytes(), &m)
}

fn to_json(k: &KeyMetadata) -> serde_json::Value {
    let mut v = serde_json::to_value(k).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("kms_key_id".into(), kms_key_id(k).into());
    }
    v
}

fn show(k: &KeyMetadata, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&to_json(k))?);
        return Ok(());
    }
    println!("key id:       {}", k.key_id);
    println!("aliases:      {}", k.aliases.join(", "));
    println!("state:        {}", k.state);
    println!("description:  {}", k.description);
    println!(
        "created:      {}",
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(k.created_at.max(0) as u64)
        )
    );
    println!("kms key_id:   {}", kms_key_id(k));
    println!("versions:");
    for v in &k.versions {
        let cur = if v.material_id == k.current_material_id { "  (current)" } else { "" };
        println!("  {:>3}  {}{}", v.seq, v.material_id, cur);
    }
    Ok(())
}
