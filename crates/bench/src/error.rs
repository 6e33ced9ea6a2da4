//! The crate's one error type.

use thiserror::Error;

/// Any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a benchmark could not run. The causes are kept as the source chain, so `{:#}` through
/// anyhow (or walking `source()`) prints `what: why: ...` on one line.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The run cannot go on; the message says why.
    #[error("{0}")]
    Failed(String),
    /// A step failed (`context`) because of `source`.
    #[error("{context}")]
    Context {
        /// The step.
        context: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// An error of a library or the system, as it is.
    #[error(transparent)]
    Other(BoxError),
}

/// Result with [`BenchError`].
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

macro_rules! from_errors {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for BenchError {
            fn from(e: $t) -> Self {
                BenchError::Other(Box::new(e))
            }
        })*
    };
}

from_errors!(
    std::io::Error,
    tonic::Status,
    tonic::transport::Error,
    serde_json::Error,
    http::Error,
    hyper_util::client::legacy::Error,
    tokio::task::JoinError,
    envelope_inspect::Error,
);

impl From<BoxError> for BenchError {
    fn from(e: BoxError) -> Self {
        BenchError::Other(e)
    }
}

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    /// `context` failed because of the error.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// `context()` failed because of the error.
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<BoxError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| BenchError::Context { context: context.into(), source: e.into() })
    }

    fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| BenchError::Context { context: context(), source: e.into() })
    }
}

/// `Err(BenchError::Failed(format!(...)))`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::BenchError::Failed(format!($($arg)*)))
    };
}
pub(crate) use bail;
