//! The STIC data stages (issue #7): self-constructed preference data (`prefs`, stage 1) and
//! description-infused instruction data (`dif`, stage 2). The official strings and parameters are
//! in `prompts` and `crate::image::corrupt`; their sources are listed in docs/STIC.md.
//!
//! Both stages share the conventions of this module:
//! - Every item (image or instruction example) draws from its own `Rng`, seeded from `--seed` and
//!   the item's name (`item_rng`), so its prompt, corruption and sampling stream do not depend on
//!   which other items are processed or in what order.
//! - Items are processed in fixed batches of `batch_size` consecutive selected items. Results are
//!   appended to a JSONL file and flushed one line per item; a restart reads the file, drops a torn
//!   last line, and skips the items already there. A batch that was only partly written is
//!   generated again as a whole (so that every sequence sees the same batch as in an uninterrupted
//!   run, which keeps the floating-point results identical) and only its missing lines are appended.
//! - An image that cannot be read is reported on stderr, recorded in `<out>.skipped` (one JSON
//!   line: the item and the error) and not retried on restart (delete that file to retry).

pub mod dif;
pub mod jsonl;
pub mod prefs;
pub mod prompts;

use std::time::Duration;

use crate::generate::SamplingParams;
use crate::rng::Rng;

pub use dif::{build_dif, BuildDifArgs};
pub use prefs::{build_prefs, BuildPrefsArgs};

/// `build_prefs` as work for [`crate::generate::with_pipeline`] (any `--device`).
pub struct BuildPrefsWork(pub BuildPrefsArgs);

impl crate::generate::WithPipeline for BuildPrefsWork {
    type Out = Summary;
    fn run<B: crate::backend::Backend>(self, pipe: crate::generate::Pipeline<B>) -> crate::error::Result<Summary> {
        build_prefs(&pipe, &self.0)
    }
}

/// `build_dif` as work for [`crate::generate::with_pipeline`].
pub struct BuildDifWork(pub BuildDifArgs);

impl crate::generate::WithPipeline for BuildDifWork {
    type Out = Summary;
    fn run<B: crate::backend::Backend>(self, pipe: crate::generate::Pipeline<B>) -> crate::error::Result<Summary> {
        build_dif(&pipe, &self.0)
    }
}

/// The generation settings of the official scripts (stic/generate_pref.py:151-154 and
/// stic/generate_des_stage2.py:143-146, not overridden by scripts/generate_pref.sh or
/// scripts/generate_des_stage2.sh): sampling at temperature 0.2, no top-p (`None`), one beam, at
/// most 1024 new tokens. (`seed` is unused: each item has its own.)
pub fn stic_sampling() -> SamplingParams {
    SamplingParams { max_new_tokens: 1024, temperature: 0.2, top_k: 0, top_p: 1.0, seed: 0 }
}

/// What a data stage did in this run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Items selected (`--n` of those available).
    pub selected: usize,
    /// Items found already done (or already recorded as skipped) when the run started.
    pub resumed: usize,
    /// Items generated and written in this run.
    pub written: usize,
    /// Items skipped in this run (unreadable image, empty answer).
    pub skipped: usize,
    /// Tokens generated in this run (every sequence of every generation call).
    pub tokens: usize,
    /// Wall time of the generation loop (model loading excluded).
    pub elapsed: Duration,
    /// The run stopped at `stop_after` before finishing.
    pub stopped: bool,
}

impl Summary {
    /// Images (items) generated per second in this run.
    pub fn images_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.written as f64 / s
        } else {
            0.0
        }
    }
}

/// FNV-1a, 64-bit: a stable hash of an item's name (not `std`'s, which may change between
/// releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The random stream of one item: a function of the run's seed and the item's name only.
pub fn item_rng(seed: u64, name: &str) -> Rng {
    let mut mix = Rng::new(seed ^ fnv1a(name.as_bytes()).rotate_left(17));
    Rng::new(mix.next_u64())
}

/// `n` of `total` indices drawn without replacement from `seed` (all of them when `n >= total`),
/// in increasing order.
pub fn sample_indices(total: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..total).collect();
    if n < total {
        let mut rng = Rng::new(seed ^ 0x5354_4943_5f53_414d); // "STIC_SAM"
        for i in 0..n {
            let j = i + rng.below(total - i);
            idx.swap(i, j);
        }
        idx.truncate(n);
        idx.sort_unstable();
    }
    idx
}

/// The warning for a skipped item: `msg` (which names the file when it is an image error), the
/// item when it does not, and where the skip is recorded.
pub(crate) fn skip_warning(item: &str, msg: &str, recorded_in: &std::path::Path) -> String {
    let what = if msg.contains(item) { msg.to_string() } else { format!("{item}: {msg}") };
    format!("{what}; skipped (recorded in {})", recorded_in.display())
}

/// Where a data stage puts each item's outcome: a result is appended to `log`; a failure is warned
/// about (naming `what`), recorded in `skip_log` as `skip_record` and counted; either way the bar
/// advances. Returns the written result, and whether `stop_after` is reached.
pub(crate) struct Sink<'a> {
    pub log: &'a mut jsonl::JsonlLog,
    pub skip_log: &'a mut jsonl::JsonlLog,
    pub skipped_path: &'a std::path::Path,
    pub progress: &'a crate::progress::Progress,
    pub summary: &'a mut Summary,
    pub stop_after: Option<usize>,
}

impl Sink<'_> {
    pub(crate) fn record<R: serde::Serialize>(
        &mut self,
        outcome: std::result::Result<R, String>,
        what: &str,
        skip_record: impl FnOnce(&str) -> serde_json::Value,
    ) -> crate::error::Result<(Option<R>, bool)> {
        let written = match outcome {
            Ok(rec) => {
                self.log.append(&rec)?;
                self.summary.written += 1;
                Some(rec)
            }
            Err(msg) => {
                self.progress.warn(&skip_warning(what, &msg, self.skipped_path));
                self.skip_log.append(&skip_record(&msg))?;
                self.summary.skipped += 1;
                None
            }
        };
        self.progress.inc();
        let stop = self.stop_after.is_some_and(|k| self.summary.written >= k);
        self.summary.stopped |= stop;
        Ok((written, stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_streams_depend_on_seed_and_name_only() {
        let a = item_rng(3, "a.jpg").next_u64();
        assert_eq!(a, item_rng(3, "a.jpg").next_u64());
        assert_ne!(a, item_rng(4, "a.jpg").next_u64());
        assert_ne!(a, item_rng(3, "b.jpg").next_u64());
    }

    #[test]
    fn sampled_indices_are_distinct_sorted_and_seeded() {
        let s = sample_indices(100, 10, 1);
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s, sample_indices(100, 10, 1));
        assert_ne!(s, sample_indices(100, 10, 2));
        assert_eq!(sample_indices(5, 10, 1), vec![0, 1, 2, 3, 4]);
    }
}
