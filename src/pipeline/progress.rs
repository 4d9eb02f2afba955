//! The one printer for status and progress: stderr only, quiet when asked, and progress
//! bars only when stderr is a terminal, so stdout stays clean for results that pipe.

use std::io::IsTerminal;
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
            eprintln!("{}", msg.as_ref());
        }
    }

    /// A warning on stderr, shown even when quiet.
    pub fn warn(&self, msg: impl AsRef<str>) {
        eprintln!("warning: {}", msg.as_ref());
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
