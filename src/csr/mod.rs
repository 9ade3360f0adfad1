//! CSR (Calibrated Self-Rewarding, Zhou et al. 2024): the sentence-level search that builds its
//! preference pairs (`stic csr-prefs`). Facts and sources: docs/CSR.md.
//! - `beam`: diverse (group) beam search on any backend, transformers 4.46.3's semantics;
//! - `tree`: the sentence tree (expansion, pruning, cleaning, ranks, path costs, the pair);
//! - `prefs`: the resumable JSONL stage over a prompt file.

pub mod beam;
pub mod clean;
pub mod prefs;
pub mod tree;
