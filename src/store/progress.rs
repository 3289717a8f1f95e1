//! How long work reports where it stands: [`Progress`] values handed to an [`OnProgress`]
//! callback. Plain types, so the layers below the command line need no terminal crate; the CLI
//! draws them (`cli::progress`), everything else passes [`OnProgress::none`].

use std::sync::Arc;

/// Where a long operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What is being done now, for people: `removing delivered events`, `VACUUM`, ….
    pub phase: &'static str,
    /// Units of this phase done so far (rows, pages, tables).
    pub done: u64,
    /// Units this phase has in all, when known. `None` for a phase that runs as one statement
    /// and cannot say how far it is (shown as a spinner, never as an invented percentage), or
    /// for work whose total was not counted.
    pub total: Option<u64>,
}

impl Progress {
    /// A phase that cannot report steps.
    pub fn phase(phase: &'static str) -> Self {
        Self {
            phase,
            done: 0,
            total: None,
        }
    }

    /// `done` of `total` units of `phase`.
    pub fn step(phase: &'static str, done: u64, total: u64) -> Self {
        Self {
            phase,
            done,
            total: Some(total),
        }
    }
}

/// A callback that receives [`Progress`], or nobody. Cheap to clone; callable from the blocking
/// threads the SQLite work runs on.
#[derive(Clone, Default)]
pub struct OnProgress(Option<Arc<dyn Fn(Progress) + Send + Sync>>);

impl OnProgress {
    /// Nobody is watching: reports go nowhere, and totals that would cost a query to count
    /// are not counted.
    pub fn none() -> Self {
        Self(None)
    }

    /// Hands every report to `report`.
    pub fn new(report: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(report)))
    }

    /// Whether anybody receives the reports (a store counts totals only then).
    pub fn is_watched(&self) -> bool {
        self.0.is_some()
    }

    /// Reports `progress`.
    pub fn report(&self, progress: Progress) {
        if let Some(report) = &self.0 {
            report(progress);
        }
    }
}

impl std::fmt::Debug for OnProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OnProgress")
            .field(&if self.is_watched() { "watched" } else { "none" })
            .finish()
    }
}
