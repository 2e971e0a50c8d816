//! Progress bar and per-file messages of an index run on stderr.
//!
//! The bar is drawn only when stderr is a terminal. Failures are printed as
//! `path: reason` lines above the bar as they happen.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::paths::display_path;
use crate::pipeline::{Failure, IndexObserver};

pub struct TerminalProgress {
    bar: ProgressBar,
    quiet: bool,
}

impl TerminalProgress {
    pub fn new(quiet: bool) -> TerminalProgress {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} images, {per_sec}, eta {eta}",
            )
            .expect("valid progress template")
            .progress_chars("=> "),
        );
        TerminalProgress { bar, quiet }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl IndexObserver for TerminalProgress {
    fn start(&self, to_process: usize) {
        self.bar.set_length(to_process as u64);
    }

    fn advance(&self, files: usize) {
        self.bar.inc(files as u64);
    }

    fn failed(&self, failure: &Failure) {
        self.bar
            .suspend(|| eprintln!("{}: {}", display_path(&failure.path), failure.reason));
    }

    fn warning(&self, path: &Path, message: &str) {
        if !self.quiet {
            self.bar
                .suspend(|| eprintln!("warning: {}: {message}", display_path(path)));
        }
    }
}
