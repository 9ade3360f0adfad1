//! Progress bars for the long stages (data building, training, evaluation): indicatif on stderr
//! with rate and ETA, hidden in quiet mode (logs) and when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` units named `label`; `unit` names what is counted (images, steps, items).
pub fn bar(len: u64, label: &str, unit: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() });
    let template = format!("{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}");
    pb.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    pb.set_prefix(label.to_string());
    pb
}
