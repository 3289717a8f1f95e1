//! Progress of long commands (`cleanup`, `dlq replay --all`, `backup`, `restore`, `db maintain`)
//! on the terminal: the store's [`Progress`] reports drawn as one line on stderr, a bar where
//! the work counts its steps against a total and a spinner with the phase's name where a single
//! statement cannot say how far it is. Nothing is drawn unless a person watches: stderr is a
//! terminal that can redraw a line, and the output is not `--json`.

use std::{
    io::IsTerminal,
    sync::{Arc, Mutex},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store::{OnProgress, Progress};

/// How often a spinner turns while a phase reports nothing.
const TICK: Duration = Duration::from_millis(120);

/// Whether progress is drawn: not for `--json` (scripts read stdout, and a bar between its
/// lines on a shared terminal would garble a copy-paste), not when stderr is a pipe or a file,
/// and not on a terminal that cannot move its cursor (`TERM=dumb`). No colours are used, so
/// `NO_COLOR` needs nothing more.
fn wanted(as_json: bool) -> bool {
    !as_json
        && std::io::stderr().is_terminal()
        && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
}

/// The progress line of one command; cleared when finished or dropped (on an error too), so
/// the command's summary and errors print as they always have.
#[derive(Debug)]
pub struct ProgressLine {
    /// `None` when nothing is drawn.
    shown: Option<Arc<Mutex<Option<Phase>>>>,
}

/// The phase on the line now, drawn by its own bar: a new phase starts its own count and clock.
#[derive(Debug)]
struct Phase {
    name: &'static str,
    counted: bool,
    bar: ProgressBar,
}

impl ProgressLine {
    /// A line on stderr if [`wanted`], else nothing. Nothing is drawn before the first report.
    pub fn start(as_json: bool) -> Self {
        Self {
            shown: wanted(as_json).then(Arc::default),
        }
    }

    /// The callback the store reports to: draws on this line, or [`OnProgress::none`] when
    /// nothing is drawn (so the store counts no totals for nobody).
    pub fn on_progress(&self) -> OnProgress {
        let Some(shown) = self.shown.clone() else {
            return OnProgress::none();
        };
        OnProgress::new(move |progress| {
            let mut shown = shown
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            show(&mut shown, progress, ProgressDrawTarget::stderr);
        })
    }

    /// Clears the line, before the summary is printed.
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        if let Some(shown) = &self.shown {
            let mut shown = shown
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(phase) = shown.take() {
                phase.bar.finish_and_clear();
            }
        }
    }
}

/// Draws `progress`: on the bar of its phase, or on a new bar (on a target from `target`) that
/// replaces the last phase's.
fn show(shown: &mut Option<Phase>, progress: Progress, target: fn() -> ProgressDrawTarget) {
    let counted = progress.total.is_some();
    let same = shown
        .as_ref()
        .is_some_and(|phase| phase.name == progress.phase && phase.counted == counted);
    if !same {
        if let Some(phase) = shown.take() {
            phase.bar.finish_and_clear();
        }
        // Built whole before it is drawn, so no frame shows a mix of two phases.
        let bar = ProgressBar::with_draw_target(progress.total, target())
            .with_style(if counted {
                bar_style()
            } else {
                spinner_style()
            })
            .with_message(progress.phase)
            .with_position(progress.done);
        // Drawn at once (a phase may end before the ticker's first turn), then kept turning.
        bar.tick();
        bar.enable_steady_tick(TICK);
        *shown = Some(Phase {
            name: progress.phase,
            counted,
            bar,
        });
        return;
    }
    if let Some(phase) = shown {
        if let Some(total) = progress.total {
            phase.bar.set_length(total);
        }
        phase.bar.set_position(progress.done);
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}… {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("|/-\\ ")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {msg} [{wide_bar}] {human_pos}/{human_len} {percent}% {elapsed}, about {eta} left",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .tick_chars("|/-\\ ")
    .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_never_gets_a_progress_line() {
        assert!(!wanted(true));
        assert!(ProgressLine::start(true).shown.is_none());
        assert!(!ProgressLine::start(true).on_progress().is_watched());
    }

    #[test]
    fn a_new_phase_starts_its_own_count() {
        let mut shown = None;
        show(
            &mut shown,
            Progress::step("copying pages", 10, 40),
            ProgressDrawTarget::hidden,
        );
        show(
            &mut shown,
            Progress::step("copying pages", 20, 40),
            ProgressDrawTarget::hidden,
        );
        let bar = &shown.as_ref().expect("a phase").bar;
        assert_eq!((bar.position(), bar.length()), (20, Some(40)));
        assert_eq!(bar.message(), "copying pages");
        show(
            &mut shown,
            Progress::phase("VACUUM"),
            ProgressDrawTarget::hidden,
        );
        let bar = &shown.as_ref().expect("a phase").bar;
        assert_eq!((bar.position(), bar.length()), (0, None));
        assert_eq!(bar.message(), "VACUUM");
    }
}
