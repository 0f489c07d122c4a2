//! Draws the library's progress with indicatif on a terminal; stays quiet otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new(quiet: bool) -> Bar {
        let bar = ProgressBar::hidden();
        if !quiet && std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        Bar { bar }
    }

    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }
}

impl strata::progress::Progress for Bar {
    fn begin(&self, phase: &str, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(0);
        let style =
            ProgressStyle::with_template("{msg:8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_message(phase.to_string());
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}
