use std::{error::Error as StdError, fmt};

/// Boxed source error of a backend.
type Source = Box<dyn StdError + Send + Sync + 'static>;

/// The one error type of every [`IdempotencyStore`](super::IdempotencyStore).
///
/// Backends map their own errors into it, keeping the original as the
/// [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: Box<str>,
    source: Option<Source>,
}

/// What kind of failure a [`StoreError`] is; the layer answers each differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend cannot be reached or did not answer in time. The layer fails closed
    /// (503 + `Retry-After`) or open, as configured.
    Unavailable,
    /// The store is full of records it may not evict (in flight or fresh). Answered 503.
    CapacityExhausted,
    /// The record is no longer in flight under the given token: the lease expired and
    /// another request may have taken over. Never overwrites anything.
    LeaseLost,
    /// A stored value could not be decoded.
    Corrupt,
    /// Anything else the backend reported.
    Backend,
}

impl StoreError {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: StoreErrorKind, message: impl Into<Box<str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the backend's own error.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Shorthand for an [`Unavailable`](StoreErrorKind::Unavailable) error caused by `source`.
    pub fn unavailable(source: impl Into<Source>) -> Self {
        Self::new(
            StoreErrorKind::Unavailable,
            "the idempotency store is unavailable",
        )
        .with_source(source)
    }

    /// Shorthand for a [`LeaseLost`](StoreErrorKind::LeaseLost) error.
    pub fn lease_lost() -> Self {
        Self::new(
            StoreErrorKind::LeaseLost,
            "the record is no longer in flight under this fencing token",
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}
