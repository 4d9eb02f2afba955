//! The one printer for status and progress: stderr only, quiet when asked, and progress
//! bars only when stderr is a terminal, so stdout stays clean for results that pipe.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub quiet: bool,
    pub bars: bool,
}

impl Printer {
    pub fn new(quiet: bool) -> Printer {
        Printer {
            quiet,
            bars: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// A status line on stderr (nothing when quiet).
    pub fn status(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            to_stderr(format_args!("{}", msg.as_ref()));
        }
    }

    /// A warning on stderr, shown even when quiet.
    pub fn warn(&self, msg: impl AsRef<str>) {
        to_stderr(format_args!("warning: {}", msg.as_ref()));
    }

    /// A bar of `len` steps (hidden unless stderr is a terminal).
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        bar
    }

    /// A spinner for work of unknown length.
    pub fn spinner(&self, what: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let s = ProgressBar::new_spinner();
        s.set_message(what.to_string());
        s.enable_steady_tick(Duration::from_millis(120));
        s
    }
}

/// One line on stderr that the work does not depend on: a failed write (stderr closed, as
/// in `palpipe run p.yaml 2>&1 | head`) is dropped rather than stopping the work, which
/// `eprintln!` would do with a panic.
pub fn to_stderr(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
