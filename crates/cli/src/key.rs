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
    if args.backend == "pkcs11" {
        return pkcs11(args);
    }
    if args.module.is_some() || args.token_label.is_some() || args.token_serial.is_some() || args.pin_file.is_some() {
        anyhow::bail!("--module, --token-label, --token-serial and --pin-file apply to --backend pkcs11");
    }
    let dir = args.data_dir.clone().unwrap_or_else(crate::config::default_data_dir);
    if let KeyCommand::Reseal(a) = &args.command {
        return crate::reseal::run(&dir, a);
    }
    // Only `create` may start a new store; every other command needs the existing one, so a
    // mistyped --data-dir is an error rather than a fresh, empty store.
    let importing = matches!(args.command, KeyCommand::Import { .. });
    let root = crate::reseal::parse_root(args.root_key.as_deref().unwrap_or("file"))?;
    let location = match args.store.as_deref() {
        None => envelope_keystore::Location::DataDir,
        Some(s) => envelope_keystore::Location::parse(s).map_err(|e| anyhow::anyhow!("--store: {e}"))?,
    };
    if location.is_shared() && matches!(args.command, KeyCommand::Export { .. } | KeyCommand::Import { .. }) {
        anyhow::bail!(
            "key export and import copy keys between SQLite stores; every plugin on a shared store already sees its keys"
        );
    }
    // Only `create` may start a new store; on a shared store, only the root key is new.
    let options = envelope_keystore::StoreOptions {
        location,
        create: matches!(args.command, KeyCommand::Create { .. }),
        refresh_interval: std::time::Duration::from_secs(3600),
    };
    let store = if matches!(options.location, envelope_keystore::Location::DataDir) {
        match args.command {
            KeyCommand::Create { .. } => KeyStore::open_with(&dir, &root),
            _ => KeyStore::open_existing_with(&dir, &root),
        }
    } else {
        KeyStore::open_with_options(&dir, &root, &options)
    }
    .with_context(|| {
        if importing && !dir.join(envelope_keystore::store::ROOT_KEY_FILE).exists() {
            format!(
                "cannot open the key store in {}: before the first import, copy root.key from the node that \
                 exported (once, over a secure channel, mode 0600; see docs/operations.md, High availability)",
                dir.display()
            )
        } else {
            format!("cannot open the key store in {}", dir.display())
        }
    })?;
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
        KeyCommand::Export { out, force } => export(&store, &out, force, json),
        KeyCommand::Import { from, dry_run } => import(&store, &from, dry_run, json),
        KeyCommand::Reseal(_) => Ok(()),
    }
}

/// `envelope key export`: one consistent file with every key and version, sealed by root.key.
fn export(store: &KeyStore, out: &std::path::Path, force: bool, json: bool) -> Result<()> {
    let e = store.export().context("cannot export the keys")?;
    envelope_keystore::export::write_file(out, &e.bytes, force)?;
    if json {
        let v = serde_json::json!({
            "file": out, "keys": e.keys, "versions": e.versions, "aliases": e.aliases,
            "skipped_external": e.skipped_external, "skipped_specs": e.skipped_specs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "exported {} key(s), {} version(s), {} alias(es) from {} to {} (mode 0600; key material sealed by root.key)",
        e.keys,
        e.versions,
        e.aliases,
        store.dir().display(),
        out.display()
    );
    for id in &e.skipped_external {
        println!("note: key {id} has imported key material (origin EXTERNAL) and is not exported");
    }
    for id in &e.skipped_specs {
        println!(
            "note: key {id} is not a symmetric encryption key (an HMAC key of the key server) and is not exported"
        );
    }
    println!(
        "next: copy it to every other control-plane node and run there: envelope key import --data-dir {} --from FILE",
        store.dir().display()
    );
    Ok(())
}

/// `envelope key import`: merge an export into this store and say what changed.
fn import(store: &KeyStore, from: &std::path::Path, dry_run: bool, json: bool) -> Result<()> {
    let bytes = envelope_keystore::export::read_file(from)?;
    let s = store.import(&bytes, dry_run).with_context(|| format!("cannot import {}", from.display()))?;
    let new_key_id = |id: &str| {
        KeyRef::parse(id).ok().and_then(|r| store.describe(&r).ok()).map(|k| kms_key_id(&k)).unwrap_or_default()
    };
    if json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("file".into(), from.display().to_string().into());
            o.insert("changed".into(), s.changed().into());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let exported = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.exported_at.max(0) as u64),
    );
    if !s.changed() {
        println!(
            "nothing to import: {} already has every key, version and alias in {} (exported {exported})",
            store.dir().display(),
            from.display()
        );
    } else {
        let verb = if dry_run { "dry run, nothing written: would add" } else { "imported: added" };
        println!(
            "{verb} {} key(s), {} version(s), {} alias(es) from {} (exported {exported})",
            s.keys_added.len(),
            s.versions_added,
            s.aliases_added.len(),
            from.display()
        );
        for id in &s.keys_added {
            println!("  new key {id}");
        }
        for a in &s.aliases_added {
            println!("  new alias {a}");
        }
        for c in &s.current_advanced {
            if dry_run {
                println!("  key {}: current version would move {} -> {}", c.key_id, c.from_seq, c.to_seq);
            } else {
                println!(
                    "  key {}: current version {} -> {} (KMS key_id {}); a running plugin reports it within one \
                     health interval",
                    c.key_id,
                    c.from_seq,
                    c.to_seq,
                    new_key_id(&c.key_id)
                );
            }
        }
    }
    for d in &s.state_differs {
        println!(
            "note: key {} is {} here but {} in the export; left as it is (`envelope key enable|disable` changes it)",
            d.key_id, d.here, d.file
        );
    }
    Ok(())
}

/// The KMS v2 key_id the plugin reports for this key's current version.
fn kms_key_id(k: &KeyMetadata) -> String {
    // Only symmetric encryption keys wrap data keys for the plugin.
    if k.key_spec != envelope_keystore::KeySpec::SymmetricDefault {
        return String::new();
    }
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
    println!("key spec:     {} ({})", k.key_spec, k.key_usage);
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

/// `envelope key … --backend pkcs11`: keys generated and kept inside a PKCS#11 token, named by
/// their CKA_LABEL.
fn pkcs11(args: KeyArgs) -> Result<()> {
    use envelope_plugin_pkcs11::{Pkcs11Config, Token, TokenSelector};
    let module = args.module.ok_or_else(|| anyhow::anyhow!("--backend pkcs11 needs --module (the PKCS#11 library)"))?;
    let token = match (args.token_label, args.token_serial) {
        (Some(l), None) => TokenSelector::Label(l),
        (None, Some(s)) => TokenSelector::Serial(s),
        (None, None) => anyhow::bail!("--backend pkcs11 needs --token-label or --token-serial"),
        (Some(_), Some(_)) => anyhow::bail!("give --token-label or --token-serial, not both"),
    };
    let pin_file = args.pin_file.ok_or_else(|| anyhow::anyhow!("--backend pkcs11 needs --pin-file (mode 0600)"))?;
    let config = Pkcs11Config { module, token, pin_file, key_label: String::new(), sessions: 1 };
    let t = Token::open(&config)?;
    let json = args.output == "json";
    let label = match args.command {
        KeyCommand::Create { name, .. } => {
            t.create_key(&name)?;
            name
        }
        KeyCommand::Rotate { key } => {
            t.rotate_key(&key)?;
            key
        }
        KeyCommand::Disable { key } => {
            t.set_enabled(&key, false)?;
            key
        }
        KeyCommand::Enable { key } => {
            t.set_enabled(&key, true)?;
            key
        }
        KeyCommand::Describe { key } => key,
        KeyCommand::List | KeyCommand::Export { .. } | KeyCommand::Import { .. } | KeyCommand::Reseal(_) => {
            anyhow::bail!(
                "list, export, import and reseal apply to the embedded key store; with pkcs11 use `envelope key describe LABEL` \
             (the token is the store: copy keys between HSMs with the vendor's tools)"
            )
        }
    };
    let keys = t.list_keys(&label)?;
    if json {
        let v: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "label": k.label,
                    "cka_id": hex::encode(&k.id),
                    "generation": k.generation,
                    "kms_key_id": k.key_id,
                    "encrypt": k.encrypt,
                    "decrypt": k.decrypt,
                    "sensitive": k.sensitive,
                    "extractable": k.extractable,
                    "current": k.current,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<10}  {:<32}  {:<39}  {:<7}  {:<7}  CURRENT",
            "GENERATION", "CKA_ID", "KMS KEY_ID", "ENCRYPT", "DECRYPT"
        );
        for k in &keys {
            println!(
                "{:<10}  {:<32}  {:<39}  {:<7}  {:<7}  {}",
                k.generation,
                hex::encode(&k.id),
                k.key_id,
                k.encrypt,
                k.decrypt,
                if k.current { "yes" } else { "" }
            );
        }
    }
    Ok(())
}
