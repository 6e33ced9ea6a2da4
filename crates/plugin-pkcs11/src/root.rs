//! A key store's root key wrapped by an AES key inside a PKCS#11 token ("auto-unseal"): the
//! [`RootWrapper`] of [`envelope_keystore::RootSource::Pkcs11`], and the strict parser of the
//! RFC 7512 URI that names the token key:
//!
//! `pkcs11:token=kms;object=root;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/envelope/pkcs11.pin`
//!
//! Path attributes: `token` or `serial` (which token), `object` and/or `id` (which key; `type`
//! may say `secret-key`). Query attributes: `module-path` and `pin-source` (a `file:` URI or an
//! absolute path; the file must be 0600), both required; `pin-value` is refused. Values are
//! percent-encoded; an attribute given twice or unknown is refused.

use std::path::PathBuf;
use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use envelope_keystore::root::{RootWrapper, WRAP_IV_LEN};
use envelope_plugin::PluginError;
use zeroize::Zeroizing;

use crate::classify::{Failure, pkcs11};
use crate::module::Module;
use crate::pin::PinSource;
use crate::pool::{Pool, Pooled, TokenSelector};

/// A parsed `pkcs11:` URI naming an AES key in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// Which token.
    pub token: TokenSelector,
    /// `CKA_LABEL` of the key.
    pub object: Option<String>,
    /// `CKA_ID` of the key.
    pub id: Option<Vec<u8>>,
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The PIN file.
    pub pin_file: PathBuf,
}

fn bad(m: impl Into<String>) -> PluginError {
    PluginError::InvalidRequest(format!("root key URI: {}", m.into()))
}

fn pct_decode(v: &str) -> Result<Vec<u8>, PluginError> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(|| bad(format!("truncated %-escape in {v:?}")))?;
                let s = std::str::from_utf8(hex).map_err(|_| bad("bad %-escape"))?;
                out.push(u8::from_str_radix(s, 16).map_err(|_| bad(format!("bad %-escape %{s}")))?);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=&/".contains(&c) => {
                out.push(c);
                i += 1;
            }
            c => return Err(bad(format!("character {:?} must be %-encoded", c as char))),
        }
    }
    Ok(out)
}

fn text(v: &str) -> Result<String, PluginError> {
    String::from_utf8(pct_decode(v)?).map_err(|_| bad("a value is not UTF-8"))
}

/// Percent-encodes `b` for a URI path value (unreserved characters kept).
fn pct_encode(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI (see the module documentation).
    pub fn parse(uri: &str) -> Result<Self, PluginError> {
        let rest = uri.strip_prefix("pkcs11:").ok_or_else(|| bad("must start with pkcs11:"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut token, mut serial, mut object, mut id, mut module, mut pin) = (None, None, None, None, None, None);
        let set = |slot: &mut Option<String>, name: &str, v: &str| -> Result<(), PluginError> {
            if slot.replace(v.to_string()).is_some() {
                return Err(bad(format!("{name} is given twice")));
            }
            Ok(())
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or_else(|| bad(format!("{attr:?} is not name=value")))?;
            match k {
                "token" => set(&mut token, k, v)?,
                "serial" => set(&mut serial, k, v)?,
                "object" => set(&mut object, k, v)?,
                "id" => set(&mut id, k, v)?,
                "type" if text(v)? == "secret-key" => {}
                "type" => return Err(bad("type must be secret-key (an AES key)")),
                other => return Err(bad(format!("unsupported path attribute {other:?}"))),
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or_else(|| bad(format!("{attr:?} is not name=value")))?;
            match k {
                "module-path" => set(&mut module, k, v)?,
                "pin-source" => set(&mut pin, k, v)?,
                "pin-value" => {
                    return Err(bad("pin-value is refused: give the PIN in a 0600 file (pin-source=file:…)"));
                }
                other => return Err(bad(format!("unsupported query attribute {other:?}"))),
            }
        }
        let token = match (token, serial) {
            (Some(t), None) => TokenSelector::Label(text(&t)?),
            (None, Some(s)) => TokenSelector::Serial(text(&s)?),
            (Some(_), Some(_)) => return Err(bad("give token or serial, not both")),
            (None, None) => return Err(bad("names no token (token=… or serial=…)")),
        };
        let object = object.map(|o| text(&o)).transpose()?;
        let id = id.map(|i| pct_decode(&i)).transpose()?;
        if object.is_none() && id.is_none() {
            return Err(bad("names no key (object=… and/or id=…)"));
        }
        if object.as_ref().is_some_and(|o| o.is_empty()) || id.as_ref().is_some_and(|i| i.is_empty()) {
            return Err(bad("object and id must not be empty"));
        }
        let module = PathBuf::from(text(&module.ok_or_else(|| bad("module-path is missing"))?)?);
        let pin = text(&pin.ok_or_else(|| bad("pin-source is missing (pin-source=file:/path/to/pin)"))?)?;
        let pin_file = PathBuf::from(pin.strip_prefix("file://").or_else(|| pin.strip_prefix("file:")).unwrap_or(&pin));
        if !module.is_absolute() || !pin_file.is_absolute() {
            return Err(bad("module-path and pin-source must be absolute paths"));
        }
        Ok(Self { token, object, id, module, pin_file })
    }

    /// The URI's path part in a canonical form (no module, no PIN source): the name stored with
    /// the wrapped root key.
    pub fn key_uri(&self) -> String {
        let mut parts = vec![match &self.token {
            TokenSelector::Label(l) => format!("token={}", pct_encode(l.as_bytes())),
            TokenSelector::Serial(s) => format!("serial={}", pct_encode(s.as_bytes())),
        }];
        if let Some(o) = &self.object {
            parts.push(format!("object={}", pct_encode(o.as_bytes())));
        }
        if let Some(i) = &self.id {
            parts.push(format!("id={}", i.iter().map(|b| format!("%{b:02X}")).collect::<String>()));
        }
        format!("pkcs11:{}", parts.join(";"))
    }
}

/// The root key wrapper over one token key: AES-GCM (`CKM_AES_GCM`, a 12-byte IV from the host's
/// random generator, 128-bit tag) inside the token. Blocking calls through a one-session pool.
pub struct Pkcs11RootWrapper {
    uri: Pkcs11Uri,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Pkcs11RootWrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11RootWrapper").field("key", &self.uri.key_uri()).finish_non_exhaustive()
    }
}

impl Pkcs11RootWrapper {
    /// Loads the module of `uri` and checks the PIN file (the token is reached at the first
    /// wrap or unwrap).
    pub fn new(uri: Pkcs11Uri) -> Result<Self, PluginError> {
        crate::pin::read_pin_file(&uri.pin_file)?;
        let module = Module::load(&uri.module)?;
        let pool = Pool::new(module, uri.token.clone(), PinSource::file(&uri.pin_file), 1, false);
        Ok(Self { uri, pool: Arc::new(pool) })
    }

    /// [`Pkcs11Uri::parse`] then [`Pkcs11RootWrapper::new`].
    pub fn from_uri(uri: &str) -> Result<Self, PluginError> {
        Self::new(Pkcs11Uri::parse(uri)?)
    }

    fn find(&self, s: &Pooled) -> Result<ObjectHandle, Failure> {
        let mut template = vec![Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES)];
        if let Some(o) = &self.uri.object {
            template.push(Attribute::Label(o.as_bytes().to_vec()));
        }
        if let Some(i) = &self.uri.id {
            template.push(Attribute::Id(i.clone()));
        }
        let what = self.uri.key_uri();
        let found = s.session()?.find_objects(&template).map_err(pkcs11(what.clone()))?;
        match found.as_slice() {
            [h] => Ok(*h),
            [] if !s.logged_in()? => Err(Failure::NotLoggedIn),
            [] => Err(Failure::Plugin(PluginError::UnknownKey(format!("no AES key {what} in the token")))),
            several => Err(Failure::Plugin(PluginError::KeyUnusable(format!(
                "{} AES keys match {what}: add id=… to name one",
                several.len()
            )))),
        }
    }
}

fn root_err(e: PluginError) -> envelope_keystore::Error {
    envelope_keystore::Error::RootKey(format!("PKCS#11 token: {e}"))
}

impl RootWrapper for Pkcs11RootWrapper {
    fn key_uri(&self) -> String {
        self.uri.key_uri()
    }

    fn wrap(&self, aad: &[u8], root: &[u8]) -> envelope_keystore::Result<([u8; WRAP_IV_LEN], Vec<u8>)> {
        let mut iv = [0u8; WRAP_IV_LEN];
        aws_lc_rs::rand::fill(&mut iv).map_err(|_| envelope_keystore::Error::Crypto)?;
        let sealed = self
            .pool
            .run(&|s| {
                let h = self.find(s)?;
                let mut iv_param = iv;
                let params = GcmParams::new(&mut iv_param, aad, 128.into())
                    .map_err(|e| Failure::Plugin(PluginError::Internal(format!("GCM parameters: {e}"))))?;
                s.session()?.encrypt(&Mechanism::AesGcm(params), h, root).map_err(pkcs11(self.uri.key_uri()))
            })
            .map_err(root_err)?;
        Ok((iv, sealed))
    }

    fn unwrap(
        &self,
        aad: &[u8],
        iv: &[u8; WRAP_IV_LEN],
        wrapped: &[u8],
    ) -> envelope_keystore::Result<Zeroizing<Vec<u8>>> {
        self.pool
            .run(&|s| {
                let h = self.find(s)?;
                let mut iv_param = *iv;
                let params = GcmParams::new(&mut iv_param, aad, 128.into())
                    .map_err(|e| Failure::Plugin(PluginError::Internal(format!("GCM parameters: {e}"))))?;
                s.session()?
                    .decrypt(&Mechanism::AesGcm(params), h, wrapped)
                    .map(Zeroizing::new)
                    .map_err(pkcs11(format!("unwrapping the root key with {}", self.uri.key_uri())))
            })
            .map_err(root_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/envelope/pkcs11.pin";

    #[test]
    fn parses_rfc7512_uris_strictly() {
        let u = Pkcs11Uri::parse(&format!("pkcs11:token=kms;object=root;id=%01%02{Q}")).unwrap();
        assert_eq!(u.token, TokenSelector::Label("kms".into()));
        assert_eq!(u.object.as_deref(), Some("root"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(u.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(u.pin_file, PathBuf::from("/etc/envelope/pkcs11.pin"));
        assert_eq!(u.key_uri(), "pkcs11:token=kms;object=root;id=%01%02");
        let u = Pkcs11Uri::parse(&format!("pkcs11:serial=12ab;object=my%20root;type=secret-key{Q}")).unwrap();
        assert_eq!(u.token, TokenSelector::Serial("12ab".into()));
        assert_eq!(u.key_uri(), "pkcs11:serial=12ab;object=my%20root");
        assert_eq!(Pkcs11Uri::parse(&format!("{}{Q}", u.key_uri())).unwrap(), u);
        for (uri, why) in [
            ("token=kms;object=root", "must start with pkcs11:"),
            ("pkcs11:object=root", "names no token"),
            ("pkcs11:token=kms", "names no key"),
            ("pkcs11:token=kms;token=x;object=r", "twice"),
            ("pkcs11:token=kms;serial=1;object=r", "not both"),
            ("pkcs11:token=kms;object=r;slot-id=1", "unsupported path attribute"),
            ("pkcs11:token=kms;object=r;type=private", "secret-key"),
            ("pkcs11:token=kms;id=%0", "truncated"),
            ("pkcs11:token=kms;id=%zz", "bad %-escape"),
            ("pkcs11:token=k ms;object=r", "must be %-encoded"),
            ("pkcs11:token=kms;object=", "must not be empty"),
        ] {
            let full = if uri.contains('?') { uri.to_string() } else { format!("{uri}{Q}") };
            let e = Pkcs11Uri::parse(&full).unwrap_err().to_string();
            assert!(e.contains(why), "{uri}: {e}");
        }
        for (q, why) in [
            ("?pin-source=file:/p", "module-path is missing"),
            ("?module-path=/m.so", "pin-source is missing"),
            ("?module-path=/m.so&pin-source=file:/p&pin-value=1234", "pin-value is refused"),
            ("?module-path=/m.so&pin-source=file:/p&module-name=x", "unsupported query attribute"),
            ("?module-path=m.so&pin-source=file:/p", "absolute"),
        ] {
            let e = Pkcs11Uri::parse(&format!("pkcs11:token=kms;object=r{q}")).unwrap_err().to_string();
            assert!(e.contains(why), "{q}: {e}");
            assert!(!e.contains("1234"), "a PIN value never appears in errors: {e}");
        }
    }
}
