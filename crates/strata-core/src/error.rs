//! Errors shared by every Strata crate.
//!
//! An [`Error`] says which [`Tier`] failed and whether retrying may help ([`Error::is_retryable`]); the engine uses
//! both to decide between fail-safe, retry and surfacing the error. Expected states are not errors: a miss is
//! `Ok(None)`, an absent key is a negative entry.

use std::sync::Arc;
use std::time::Duration;

use crate::envelope::CodecError;

/// Where in the tier chain something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tier {
    /// The in-process memory tier.
    L1,
    /// The shared remote tier (Redis/Valkey).
    L2,
    /// The source of truth (a loader, a database, an origin).
    Source,
}

impl Tier {
    /// A short lowercase name for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::Source => "source",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shared, cloneable error from a loader or a tier client. Cloneable so that every waiter of a coalesced load
/// gets the same error.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a write to the source failed, as the sink classifies its own error ([`crate::Sink::classify`]): the
/// caller's fault ([`Rejected`](Self::Rejected): retrying the same write fails again) or the source's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteErrorKind {
    /// The source refused the value (or key) by one of its rules: a type, `NOT NULL`, a `CHECK`, a unique or
    /// foreign key, a value out of range.
    Rejected {
        /// The field (column) at fault, when the source says which.
        field: Option<String>,
        /// The rule, in the source's words (`"violates check constraint \"price_cents_check\""`).
        rule: String,
    },
    /// The source could not be reached (connection refused or lost, no connection free in time).
    Unavailable {
        /// It did not answer in time (a pool or statement timeout) rather than refusing the connection.
        timed_out: bool,
    },
    /// The source answered with an error that is not the value's fault (permissions, a bug, an internal
    /// error); the log has the cause.
    Failed,
}

impl WriteErrorKind {
    /// A rejection of `field` (when known) by `rule`.
    pub fn rejected(field: Option<&str>, rule: impl Into<String>) -> Self {
        Self::Rejected {
            field: field.map(str::to_owned),
            rule: rule.into(),
        }
    }

    /// Whether the source refused the value (the writer's fault).
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }
}

/// An error that can say whether it is the source refusing a value: implemented by sinks' error types
/// (`strata_sql::SqlError`), so that a sink's [`crate::Sink::classify`] is one call and the engine and the
/// server see a [`WriteErrorKind`], never the sink's own error type.
pub trait Rejection: std::error::Error + 'static {
    /// What kind of write failure this error is.
    fn write_error_kind(&self) -> WriteErrorKind;

    /// Classifies a shared error that may be `Self`; any other error is [`WriteErrorKind::Failed`].
    fn classify(error: &SharedError) -> WriteErrorKind
    where
        Self: Sized,
    {
        error
            .downcast_ref::<Self>()
            .map_or(WriteErrorKind::Failed, Self::write_error_kind)
    }
}

/// The error type of Strata's engine.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The loader (or a source) returned an error, and no stale value could be served instead.
    #[error("loading from the {tier} failed: {source}")]
    Load {
        /// Which tier failed.
        tier: Tier,
        /// The loader's error, shared by every coalesced waiter.
        source: SharedError,
    },
    /// A call to a tier did not finish within its bound: a load from the source (the namespace's hard timeout),
    /// or an L2 read, write or bus publish (the Redis timeout). The message names the tier, not the operation:
    /// callers that log it say what they were doing.
    #[error("the {tier} call timed out after {after:?}")]
    Timeout {
        /// Which tier timed out.
        tier: Tier,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The loader panicked. The panic was caught; the cache is unaffected.
    #[error("the loader panicked: {message}")]
    LoaderPanicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// Bytes read back from a tier could not be decoded.
    #[error("corrupt entry in the {tier}: {source}")]
    Corrupt {
        /// The tier the bytes came from.
        tier: Tier,
        /// What was wrong with them.
        source: CodecError,
    },
    /// A remote tier could not be reached or answered with an error.
    #[error("the {tier} is unavailable: {message}")]
    Unavailable {
        /// Which tier.
        tier: Tier,
        /// What went wrong, with the address or command involved.
        message: String,
    },
    /// Writing to the source (a sink) failed; the caches were not changed. `kind` says whose fault it was: the
    /// value's (the source refused it: the writer must change it) or the source's (down, slow, failing).
    #[error("writing {key:?} to the source failed: {source}")]
    Write {
        /// The key.
        key: String,
        /// Whose fault: the value was refused, or the source could not take it ([`Sink::classify`]).
        ///
        /// [`Sink::classify`]: crate::Sink::classify
        kind: WriteErrorKind,
        /// The sink's error.
        source: SharedError,
    },
    /// The write committed in the source, but its invalidation did not reach the shared tier and the bus within
    /// the propagation timeout (Redis unreachable): other nodes may still serve the value it replaced. The write
    /// is *not* acknowledged; the caches are told once the shared tier is back (the invalidation waits for replay).
    #[error(
        "{key:?} was written to the source (version {version}), but the other nodes could not be told within \
         {after:?}: the shared tier or the bus is unreachable"
    )]
    NotPropagated {
        /// The key.
        key: String,
        /// The version the source now holds.
        version: u64,
        /// How long the write waited.
        after: Duration,
    },
    /// The write-behind journal is damaged: acknowledged writes may be lost. Names the file, the byte offset and
    /// what is wrong; the start stops unless recovery was asked for explicitly.
    #[error("write-behind journal {path} is damaged at byte {offset}: {problem}")]
    JournalDamaged {
        /// The file (or directory).
        path: String,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// A bounded queue is full and stayed full for the allowed wait: back off and retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The operation is not available in this configuration (says why and what to do).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The named namespace was never configured.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
    /// A namespace with this name exists, but holds another value type.
    #[error("namespace {0:?} is registered with a different value type")]
    NamespaceTypeMismatch(String),
    /// A namespace with this name is already registered.
    #[error("namespace {0:?} is already registered")]
    NamespaceExists(String),
    /// The operation does not fit the object's state (says which).
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// A policy knob has an invalid value.
    #[error(transparent)]
    InvalidPolicy(#[from] crate::policy::PolicyError),
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Load { .. }
                | Error::Timeout { .. }
                | Error::Unavailable { .. }
                | Error::Overloaded(_)
                | Error::NotPropagated { .. }
        ) || matches!(self, Error::Write { kind, .. } if !kind.is_rejected())
    }

    /// The write's failure kind, when this is a write error.
    pub fn write_kind(&self) -> Option<&WriteErrorKind> {
        match self {
            Error::Write { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// The tier the error came from, when it came from one.
    pub fn tier(&self) -> Option<Tier> {
        match self {
            Error::Load { tier, .. }
            | Error::Timeout { tier, .. }
            | Error::Corrupt { tier, .. } => Some(*tier),
            Error::LoaderPanicked { .. } | Error::Write { .. } => Some(Tier::Source),
            Error::NotPropagated { .. } => Some(Tier::L2),
            _ => None,
        }
    }

    /// The loader's own error, if this is a load error of type `E`.
    pub fn loader_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Load { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}
