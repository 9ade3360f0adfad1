//! Progress bars for the long stages (data building, training, evaluation): indicatif on stderr
//! with rate and ETA, hidden in quiet mode (logs) and when stderr is not a terminal. Warnings
//! printed through `warn` do not tear the bar.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress(ProgressBar);

impl Progress {
    /// A bar of `total` units (`unit` names them: images, steps, questions), `done` already done.
    pub fn new(total: usize, done: usize, unit: &str, quiet: bool) -> Self {
        let pb = if quiet {
            ProgressBar::hidden()
        } else {
            let pb = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            let template = format!("{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}");
            pb.set_style(ProgressStyle::with_template(&template).expect("valid template"));
            pb
        };
        pb.set_position(done as u64);
        pb.reset_eta();
        Progress(pb)
    }

    pub fn inc(&self) {
        self.0.inc(1);
    }

    /// A short status after the counts (the loss, say).
    pub fn message(&self, msg: String) {
        self.0.set_message(msg);
    }

    pub fn warn(&self, msg: &str) {
        self.0.suspend(|| eprintln!("warning: {msg}"));
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A spinner for a step of unknown length (loading data or a model); hidden with `quiet`.
pub fn spinner(msg: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"));
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}
