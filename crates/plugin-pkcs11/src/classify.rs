//! The one mapping of PKCS#11 failures to what the session pool does next and to
//! [`PluginError`]. Decided by return value (`CKR_*`) and function, never by message text.

use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};
use envelope_plugin::PluginError;

/// What a failed step inside a session means.
#[derive(Debug)]
pub enum Failure {
    /// A PKCS#11 call failed; `what` names the object it was about (for messages).
    Pkcs11 {
        /// The error.
        error: Error,
        /// What the call was about, e.g. `key "k8s" (CKA_ID 00000001…)`.
        what: String,
    },
    /// The session lost its login (another session of this process logged out, or the token
    /// was reset): private objects are invisible until the next login.
    NotLoggedIn,
    /// A decided error.
    Plugin(PluginError),
}

impl From<PluginError> for Failure {
    fn from(e: PluginError) -> Self {
        Failure::Plugin(e)
    }
}

/// Builds a [`Failure::Pkcs11`].
pub fn pkcs11(what: impl Into<String>) -> impl FnOnce(Error) -> Failure {
    let what = what.into();
    move |error| Failure::Pkcs11 { error, what }
}

/// What the pool does about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The session is gone: drop it and try again with another (at once).
    Reopen(PluginError),
    /// The login is gone: log in again and try again (at once).
    Relogin(PluginError),
    /// The token is gone or broken: re-initialise the module; a later attempt may succeed.
    Reinitialize(PluginError),
    /// The PIN was refused: never presented again.
    PinRefused(PluginError),
    /// Final.
    Fail(PluginError),
}

/// Classifies a failure.
pub fn classify(f: Failure) -> Action {
    let (error, what) = match f {
        Failure::Plugin(e) => return Action::Fail(e),
        Failure::NotLoggedIn => {
            return Action::Relogin(PluginError::Unavailable("the token session is not logged in".into()));
        }
        Failure::Pkcs11 { error, what } => (error, what),
    };
    let (rv, func) = match error {
        Error::Pkcs11(rv, func) => (rv, func),
        other => return Action::Fail(PluginError::Internal(format!("PKCS#11 ({what}): {other}"))),
    };
    let call = format!("C_{func:?} returned CKR_{}", ckr(rv));
    use RvError as R;
    match rv {
        R::SessionHandleInvalid | R::SessionClosed | R::SessionCount => {
            Action::Reopen(PluginError::Unavailable(format!("{what}: {call}")))
        }
        R::UserNotLoggedIn => Action::Relogin(PluginError::Unavailable(format!("{what}: {call}"))),
        R::ObjectHandleInvalid | R::KeyHandleInvalid => Action::Relogin(PluginError::Unavailable(format!(
            "{what}: {call} (the object went away or the session lost its login)"
        ))),
        R::PinIncorrect | R::PinInvalid | R::PinLenRange | R::PinExpired | R::PinLocked => {
            Action::PinRefused(PluginError::PermissionDenied(format!(
                "the token refused the PIN ({call}); it is not tried again, to avoid locking the token"
            )))
        }
        R::KeyFunctionNotPermitted => {
            let (attr, use_) = if matches!(func, Function::EncryptInit | Function::Encrypt) {
                ("CKA_ENCRYPT", "encryption")
            } else {
                ("CKA_DECRYPT", "decryption")
            };
            Action::Fail(PluginError::KeyUnusable(format!("{what} is disabled for {use_} ({attr} is false)")))
        }
        R::EncryptedDataInvalid | R::EncryptedDataLenRange => Action::Fail(auth_failed()),
        // SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR from C_Decrypt (after
        // C_DecryptInit accepted the key and parameters).
        R::GeneralError if matches!(func, Function::Decrypt) => Action::Fail(auth_failed()),
        R::MechanismInvalid | R::MechanismParamInvalid | R::KeyTypeInconsistent | R::KeySizeRange => Action::Fail(
            PluginError::KeyUnusable(format!("{what}: {call} (an AES-256 key and CKM_AES_GCM are required)")),
        ),
        R::TokenNotPresent
        | R::TokenNotRecognized
        | R::DeviceRemoved
        | R::DeviceError
        | R::DeviceMemory
        | R::GeneralError
        | R::FunctionFailed
        | R::CryptokiNotInitialized
        | R::SlotIdInvalid => Action::Reinitialize(PluginError::Unavailable(format!("{what}: {call}"))),
        _ => Action::Fail(PluginError::Internal(format!("{what}: {call}"))),
    }
}

fn auth_failed() -> PluginError {
    PluginError::InvalidCiphertext("authentication failed: the ciphertext, key_id or annotations were altered".into())
}

/// `CKR_` name of a return value, upper snake case (`PinIncorrect` → `PIN_INCORRECT`).
pub fn ckr(rv: RvError) -> String {
    let name = format!("{rv:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Whether a failed attempt may be retried after a pause (the token may come back).
pub fn is_transient(e: &PluginError) -> bool {
    matches!(e, PluginError::Unavailable(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(rv: RvError, func: Function) -> Action {
        classify(Failure::Pkcs11 { error: Error::Pkcs11(rv, func), what: "key \"k\"".into() })
    }

    #[test]
    fn return_values_decide_the_action() {
        assert!(matches!(f(RvError::SessionHandleInvalid, Function::Encrypt), Action::Reopen(_)));
        assert!(matches!(f(RvError::UserNotLoggedIn, Function::FindObjectsInit), Action::Relogin(_)));
        assert!(matches!(f(RvError::TokenNotPresent, Function::OpenSession), Action::Reinitialize(_)));
        assert!(matches!(f(RvError::GeneralError, Function::GetTokenInfo), Action::Reinitialize(_)));
        let Action::PinRefused(e) = f(RvError::PinIncorrect, Function::Login) else { panic!() };
        assert!(e.to_string().contains("CKR_PIN_INCORRECT"), "{e}");
        let Action::Fail(e) = f(RvError::KeyFunctionNotPermitted, Function::DecryptInit) else { panic!() };
        assert_eq!(e.to_string(), "key unusable: key \"k\" is disabled for decryption (CKA_DECRYPT is false)");
        let Action::Fail(e) = f(RvError::KeyFunctionNotPermitted, Function::EncryptInit) else { panic!() };
        assert!(e.to_string().contains("CKA_ENCRYPT"), "{e}");
        let Action::Fail(e) = f(RvError::GeneralError, Function::Decrypt) else { panic!() };
        assert!(matches!(e, PluginError::InvalidCiphertext(_)));
        let Action::Fail(e) = f(RvError::EncryptedDataInvalid, Function::Decrypt) else { panic!() };
        assert!(matches!(e, PluginError::InvalidCiphertext(_)));
        assert!(matches!(f(RvError::ArgumentsBad, Function::Encrypt), Action::Fail(PluginError::Internal(_))));
    }

    #[test]
    fn ckr_names() {
        assert_eq!(ckr(RvError::PinIncorrect), "PIN_INCORRECT");
        assert_eq!(ckr(RvError::SessionHandleInvalid), "SESSION_HANDLE_INVALID");
    }
}
