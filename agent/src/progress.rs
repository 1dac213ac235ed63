//! Download progress: a log line at every 10 %, and a progress bar when stderr is a
//! terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of one download.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_decile: u64,
    name: String,
}

impl Progress {
    /// Idle progress.
    pub fn new() -> Self {
        Progress {
            bar: None,
            total: 0,
            last_decile: 0,
            name: String::new(),
        }
    }

    /// A download of `total` bytes starts (or resumes at `at`).
    pub fn start(&mut self, name: &str, total: u64, at: u64) {
        self.total = total;
        self.name = name.to_string();
        self.last_decile = decile(at, total);
        tracing::info!(
            target_name = name,
            total,
            resumed_at = at,
            "download started ({}%)",
            percent(at, total)
        );
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(name.to_string());
            bar.set_position(at);
            self.bar = Some(bar);
        }
    }

    /// `at` bytes are in the slot.
    pub fn update(&mut self, at: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(at);
        }
        let d = decile(at, self.total);
        if d > self.last_decile {
            self.last_decile = d;
            tracing::info!(target_name = %self.name, bytes = at, total = self.total, "download {}%", percent(at, self.total));
        }
    }

    /// The download ended (either way).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

fn percent(at: u64, total: u64) -> u64 {
    at.saturating_mul(100).checked_div(total).unwrap_or(100)
}

fn decile(at: u64, total: u64) -> u64 {
    percent(at, total) / 10
}
