//! What a storage failure says: [`StoreError`], cloned to every caller whose write was in the
//! failed group commit, with the driver's error kept as its source.

use std::sync::Arc;

/// What caused a [`StoreError`]: shared, because one error is cloned to every caller whose
/// work was in the failed group commit.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A storage operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error (I/O error, locked for too long, …), or the store
    /// could not do what was asked of it. The message names the cause too, since operators
    /// read it in logs that print no cause chain.
    #[error("database error: {context}{}", Suffix(.source.as_deref()))]
    Database {
        /// What failed.
        context: String,
        /// The driver's (or the file system's) error, when there was one.
        #[source]
        source: Option<Cause>,
    },
    /// The disk holding the database is full: nothing was written.
    #[error("the database's disk is full: {0}")]
    Full(String),
    /// The request's message id was accepted before and has not expired: a replay. Nothing
    /// was stored.
    #[error("webhook-id was already used: replayed request refused")]
    Replayed,
    /// An idempotency key seen before with a different request. Nothing was stored.
    #[error("idempotency key `{0}` was used before for a different request")]
    KeyReused(String),
    /// The store has shut down.
    #[error("the store is closed")]
    Closed,
    /// This backend does not offer the operation (the message says what to use instead).
    #[error("{0}")]
    Unsupported(String),
    /// The database was written by a newer hookrelay.
    #[error(
        "the database schema is at version {found}, newer than this hookrelay knows ({known}); upgrade hookrelay"
    )]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
}

impl StoreError {
    /// A failure with no underlying error (the message says it all).
    pub fn database(context: impl Into<String>) -> Self {
        Self::Database {
            context: context.into(),
            source: None,
        }
    }

    /// A failure caused by `source`, which stays reachable through [`std::error::Error::source`].
    pub fn caused(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Database {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }
}

/// `": cause"` after a [`StoreError::Database`] context, or nothing.
struct Suffix<'a>(Option<&'a (dyn std::error::Error + Send + Sync + 'static)>);

impl std::fmt::Display for Suffix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::StoreError;

    #[test]
    fn a_database_error_names_its_cause_and_keeps_it_as_source() {
        let io = std::io::Error::other("disk I/O error");
        let error = StoreError::caused("cannot copy the backup", io);
        assert_eq!(
            error.to_string(),
            "database error: cannot copy the backup: disk I/O error"
        );
        let source = error.source().expect("the cause is kept");
        assert_eq!(source.to_string(), "disk I/O error");
        // Clones (one per waiter of a group commit) share the cause.
        let copy = error.clone();
        assert!(copy.source().is_some());
    }

    #[test]
    fn a_database_error_without_a_cause_is_its_context() {
        let error = StoreError::database("no answer for a job");
        assert_eq!(error.to_string(), "database error: no answer for a job");
        assert!(error.source().is_none());
    }
}
