//! The engine's error type.

/// Errors raised by the engine. Each variant says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's SQL could not be planned, or uses a construct views do not support.
    #[error("{0}")]
    Sql(String),
    /// A name (stream, view) the user referred to does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A name the user wants to create is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// The data directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The write-ahead log is damaged beyond the torn tail a crash can leave.
    #[error("write-ahead log: {0}")]
    Log(String),
    /// A tenant reached a hard quota limit; the whole request was refused.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(Box<crate::quota::Refusal>),
    /// The engine has stopped and can take no more work.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Sql(e.strip_backtrace())
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
