//! The progress of a pack's transfer on stderr.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sync_core::ground::Progress;
use sync_core::id::PackId;

use crate::fmt;

/// Progress on stderr: a bar with rate and ETA on a terminal, a line every few seconds
/// otherwise. Nothing in --json mode.
pub struct Bars {
    json: bool,
    tty: bool,
    bar: Option<(PackId, ProgressBar)>,
    last_line: Instant,
}

impl Bars {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            tty: std::io::stderr().is_terminal(),
            bar: None,
            last_line: Instant::now(),
        }
    }

    pub fn update(&mut self, p: Progress) {
        if self.json || p.total < 64 * 1024 {
            return;
        }
        if !self.tty {
            // A line every few seconds, and one at the end of a pack that printed any.
            let end = p.acked == p.total;
            let due = self.last_line.elapsed() > Duration::from_secs(5);
            let printed = self.bar.as_ref().is_some_and(|(id, _)| *id == p.pack);
            if (due && !end) || (end && printed) {
                self.last_line = Instant::now();
                if end {
                    self.bar = None;
                } else if !printed {
                    self.bar = Some((p.pack, ProgressBar::hidden()));
                }
                eprintln!(
                    "  pack {}: sent {} of {}, {} durable onboard",
                    p.pack.short(),
                    fmt::bytes(p.sent),
                    fmt::bytes(p.total),
                    fmt::bytes(p.acked)
                );
            }
            return;
        }
        if self.bar.as_ref().is_none_or(|(id, _)| *id != p.pack) {
            if let Some((_, b)) = self.bar.take() {
                b.finish_and_clear();
            }
            let bar = ProgressBar::new(p.total);
            bar.set_style(
                ProgressStyle::with_template(
                    "  {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("progress template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("pack {}", p.pack.short()));
            self.bar = Some((p.pack, bar));
        }
        if let Some((_, b)) = &self.bar {
            b.set_position(p.sent);
        }
    }

    pub fn finish(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
