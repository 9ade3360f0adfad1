//! Diverse (group) beam search with Hamming diversity, as transformers 4.46.3 runs it
//! (`GenerationMixin._group_beam_search`, `BeamSearchScorer`, `BeamHypotheses`,
//! `HammingDiversityLogitsProcessor`), written once on the [`Backend`] ops so every device has it.
//!
//! Semantics (transformers 4.46.3, generation/utils.py `_group_beam_search`, beam_search.py):
//! - `num_beams` beams in `num_beam_groups` groups of `gs = num_beams / num_beam_groups`; the first
//!   beam of each group starts at score 0, the others at -1e9.
//! - Every step, group by group: log_softmax of the beam's logits (f32), minus
//!   `diversity_penalty` x (how many beams of the earlier groups picked each token at this step),
//!   plus the beam's running score (f32). The best `max(2, 1 + n_eos) * gs` (beam, token) pairs of
//!   the group, best first, are walked: an EOS among the first `gs` closes a hypothesis
//!   (the beam's tokens, scored `score / (tokens + 1)^length_penalty`); an EOS further down is
//!   skipped; other tokens continue beams until the group has `gs` of them.
//! - A group keeps its `gs` best hypotheses (`BeamHypotheses.add`: the worst is dropped when one
//!   more arrives). It is done once it holds `gs` and, with `early_stopping=False`, its worst
//!   hypothesis is at least `best candidate score / step^length_penalty`; a done group emits the
//!   pad token (which still counts for the diversity of later groups) and is no longer searched.
//! - The search stops when every group is done or after `max_new_tokens` steps; the open beams of
//!   the groups not done then become hypotheses (`score / len^length_penalty`). The
//!   `num_return_sequences` best hypotheses of all groups are returned, best first (a stable sort,
//!   ties to the later one, as `sorted(...).pop()`), with their length-normalised score
//!   (`sequences_scores`). A hypothesis closed by an EOS ends with `eos[0]`, as HF's output does.
//! - The length is the number of generated tokens (transformers >= 4.37 subtracts the prompt).
//!
//! Beams of several contexts run in one decoder call per step; each context starts from a
//! [`Prefix`] (its KV cache and last hidden row), whose cache is copied into its beams' slots.
//! Beam reordering copies KV rows between slots (`KvCache::reorder_slots`).

use crate::backend::{Backend, Rows};
use crate::error::{Error, Result};
use crate::model::{Decoder, KvCache};

/// The settings of `generate(num_beams, num_beam_groups, diversity_penalty, num_return_sequences,
/// eos_token_id, pad_token_id, length_penalty, max_new_tokens)`, early_stopping False.
#[derive(Clone, Debug)]
pub struct GroupBeamParams {
    pub num_beams: usize,
    pub num_beam_groups: usize,
    pub diversity_penalty: f32,
    pub num_return_sequences: usize,
    pub eos: Vec<u32>,
    /// What a finished group emits (counts for the Hamming penalty of later groups).
    pub pad: u32,
    pub length_penalty: f64,
    pub max_new_tokens: usize,
}

impl GroupBeamParams {
    /// CSR's sample.py settings: 5 groups of 1 beam, penalty 3.0, 5 returned, 70 new tokens.
    pub fn csr(eos: u32, pad: u32) -> Self {
        GroupBeamParams {
            num_beams: 5,
            num_beam_groups: 5,
            diversity_penalty: 3.0,
            num_return_sequences: 5,
            eos: vec![eos],
            pad,
            length_penalty: 1.0,
            max_new_tokens: 70,
        }
    }

    fn check(&self) -> Result<()> {
        let g = self.num_beam_groups;
        if self.num_beams < 2 || g == 0 || g > self.num_beams || !self.num_beams.is_multiple_of(g) {
            return Err(Error::Input(format!("group beam search: {} beams in {g} groups (need >= 2 beams, a multiple of the groups)", self.num_beams)));
        }
        if self.num_return_sequences == 0 || self.num_return_sequences > self.num_beams {
            return Err(Error::Input(format!("num_return_sequences {} must be in 1..={}", self.num_return_sequences, self.num_beams)));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::Input("group beam search: max_new_tokens must be at least 1".into()));
        }
        Ok(())
    }
}

/// One returned sequence: its generated tokens (ending with `eos[0]` when an EOS closed it) and
/// HF's `sequences_scores` entry.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hypothesis {
    pub tokens: Vec<u32>,
    pub score: f64,
}

/// A context ready to be continued: a one-slot KV cache holding it and the final-normed hidden
/// state [1, C] of its last row (whose logits pick the next token).
pub struct Prefix<B: Backend> {
    pub cache: KvCache<B>,
    pub last: B::Tensor,
}

impl<B: Backend> Prefix<B> {
    pub fn len(&self) -> usize {
        self.cache.len(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Prefill several contexts (input embeddings [T_i, C]) in one decoder call; each gets its own
/// cache with room for `extra` more tokens.
pub fn prefill<B: Backend>(dec: &Decoder<B>, inputs: Vec<B::Tensor>, extra: usize) -> Result<Vec<Prefix<B>>> {
    let lens: Vec<usize> = inputs.iter().map(|x| x.n_rows()).collect();
    run_and_split(dec, None, inputs, &lens, extra)
}

/// Continue each parent with its token ids (a continued prefill reusing the parent's KV cache);
/// one decoder call for all.
pub fn extend<B: Backend>(dec: &Decoder<B>, parents: &[&Prefix<B>], ids: &[Vec<u32>], extra: usize) -> Result<Vec<Prefix<B>>> {
    if parents.len() != ids.len() || ids.iter().any(|t| t.is_empty()) {
        return Err(Error::Input("extend: one non-empty token list per parent".into()));
    }
    let xs = ids.iter().map(|t| dec.embed(t)).collect::<Result<Vec<_>>>()?;
    let lens: Vec<usize> = ids.iter().map(|t| t.len()).collect();
    run_and_split(dec, Some(parents), xs, &lens, extra)
}

/// The shared body of `prefill` and `extend`: sequences in slots of one cache (parents copied in
/// first), one forward, then each slot copied into its own cache.
fn run_and_split<B: Backend>(dec: &Decoder<B>, parents: Option<&[&Prefix<B>]>, xs: Vec<B::Tensor>, lens: &[usize], extra: usize) -> Result<Vec<Prefix<B>>> {
    let be = dec.backend();
    let n = xs.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let base: Vec<usize> = (0..n).map(|i| parents.map_or(0, |p| p[i].len())).collect();
    let cap = (0..n).map(|i| base[i] + lens[i]).max().unwrap_or(0) + extra;
    let mut cache = KvCache::new(be, &dec.cfg, n, cap)?;
    if let Some(ps) = parents {
        for (i, p) in ps.iter().enumerate() {
            cache.copy_slots(be, &p.cache, &[0], &[i])?;
        }
    }
    let x = if n == 1 { xs.into_iter().next().unwrap() } else { be.concat_rows(&xs.iter().collect::<Vec<_>>())? };
    let slots: Vec<usize> = (0..n).collect();
    let h = dec.forward(x, &slots, lens, &mut cache)?;
    let last = crate::generate::last_rows(lens);
    (0..n)
        .map(|i| {
            let mut own = KvCache::new(be, &dec.cfg, 1, base[i] + lens[i] + extra)?;
            own.copy_slots(be, &cache, &[i], &[0])?;
            Ok(Prefix { cache: own, last: be.embedding(&h, None, &[last[i]])? })
        })
        .collect()
}

/// One group's hypotheses (`BeamHypotheses`).
#[derive(Default)]
struct Hyps {
    beams: Vec<(f64, Vec<u32>)>,
    worst: f64,
}

impl Hyps {
    fn new() -> Self {
        Hyps { beams: Vec::new(), worst: 1e9 }
    }

    /// `BeamHypotheses.add` with `generated_len`.
    fn add(&mut self, tokens: Vec<u32>, sum_logprobs: f64, len: usize, keep: usize, length_penalty: f64) {
        let score = sum_logprobs / (len as f64).powf(length_penalty);
        if self.beams.len() < keep || score > self.worst {
            self.beams.push((score, tokens));
            if self.beams.len() > keep {
                let mut order: Vec<(f64, usize)> = self.beams.iter().enumerate().map(|(i, (s, _))| (*s, i)).collect();
                order.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                self.beams.remove(order[0].1);
                self.worst = order[1].0;
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    /// `BeamHypotheses.is_done` with early_stopping False.
    fn is_done(&self, best_sum: f64, len: usize, keep: usize, length_penalty: f64) -> bool {
        self.beams.len() >= keep && self.worst >= best_sum / (len as f64).powf(length_penalty)
    }
}

/// Diverse beam search from each prefix; returns `num_return_sequences` hypotheses per prefix,
/// best first, and per prefix the number of tokens its beams decoded.
pub fn group_beam_search<B: Backend>(dec: &Decoder<B>, prefixes: &[&Prefix<B>], p: &GroupBeamParams) -> Result<(Vec<Vec<Hypothesis>>, Vec<usize>)> {
    p.check()?;
    let be = dec.backend();
    let (nb, ng) = (p.num_beams, p.num_beam_groups);
    let gs = nb / ng;
    let n = prefixes.len();
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let cap = prefixes.iter().map(|x| x.len()).max().unwrap_or(0) + p.max_new_tokens;
    let mut cache = KvCache::new(be, &dec.cfg, n * nb, cap)?;
    for (i, pre) in prefixes.iter().enumerate() {
        cache.copy_slots(be, &pre.cache, &vec![0; nb], &(i * nb..(i + 1) * nb).collect::<Vec<_>>())?;
    }
    // Beam state, slot i * nb + j.
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); n * nb];
    let mut scores: Vec<f32> = (0..n * nb).map(|s| if (s % nb) % gs == 0 { 0.0 } else { -1e9 }).collect();
    let mut hyps: Vec<Hyps> = (0..n * ng).map(|_| Hyps::new()).collect();
    let mut done = vec![false; n * ng];
    let k = (2usize).max(1 + p.eos.len()) * gs;
    let mut work = vec![0usize; n];
    // Step 1 reads the prefixes' last rows: row i serves all beams of prefix i.
    let firsts = prefixes.iter().map(|x| &x.last).collect::<Vec<_>>();
    let mut hidden = if n == 1 { be.embedding(firsts[0], None, &[0])? } else { be.concat_rows(&firsts)? };
    let mut row_of: Vec<Option<usize>> = (0..n * nb).map(|s| Some(s / nb)).collect();
    for step in 1..=p.max_new_tokens {
        let logits = be.logits_host(&dec.logits(&hidden)?)?;
        let mut current = vec![p.pad; n * nb];
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        let mut next_tokens = tokens.clone();
        for i in 0..n {
            for g in 0..ng {
                let gi = i * ng + g;
                let first = i * nb + g * gs;
                if done[gi] {
                    continue;
                }
                // Hamming: tokens the earlier groups of this context picked at this step.
                let mut seen: Vec<(u32, f32)> = Vec::new();
                for &t in &current[i * nb..first] {
                    match seen.iter_mut().find(|(u, _)| *u == t) {
                        Some(e) => e.1 += 1.0,
                        None => seen.push((t, 1.0)),
                    }
                }
                let mut top: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
                let v = logits.n_cols();
                let mut processed = vec![0f32; v];
                for b in 0..gs {
                    let row = logits.row(row_of[first + b].expect("a live beam has a logits row"));
                    let lse = crate::backend::cpu::logsumexp(row);
                    for (o, &x) in processed.iter_mut().zip(row) {
                        *o = (x as f64 - lse) as f32;
                    }
                    for &(u, c) in &seen {
                        if let Some(o) = processed.get_mut(u as usize) {
                            *o -= p.diversity_penalty * c;
                        }
                    }
                    let base = scores[first + b];
                    for (t, &x) in processed.iter().enumerate() {
                        let s = x + base;
                        let flat = b * v + t;
                        if top.len() < k || better((s, flat), top[top.len() - 1]) {
                            let at = top.partition_point(|&e| better(e, (s, flat)));
                            top.insert(at, (s, flat));
                            top.truncate(k);
                        }
                    }
                }
                // BeamSearchScorer.process for this group.
                let mut kept = 0;
                for (rank, &(s, flat)) in top.iter().enumerate() {
                    let (b, t) = (flat / v, (flat % v) as u32);
                    if p.eos.contains(&t) {
                        if rank >= gs {
                            continue;
                        }
                        let mut toks = tokens[first + b].clone();
                        toks.push(p.eos[0]);
                        hyps[gi].add(toks, s as f64, step, gs, p.length_penalty);
                    } else {
                        let slot = first + kept;
                        next_tokens[slot] = tokens[first + b].clone();
                        next_tokens[slot].push(t);
                        scores[slot] = s;
                        current[slot] = t;
                        if first + b != slot {
                            src.push(first + b);
                            dst.push(slot);
                        }
                        kept += 1;
                        if kept == gs {
                            break;
                        }
                    }
                }
                if kept < gs {
                    return Err(Error::Input(format!("group beam search: fewer than {gs} non-EOS candidates")));
                }
                done[gi] = hyps[gi].is_done(top[0].0 as f64, step, gs, p.length_penalty);
            }
        }
        tokens = next_tokens;
        if step == 1 {
            // Every beam of a context still holds the same prefix: nothing to reorder.
            src.clear();
            dst.clear();
        }
        cache.reorder_slots(be, &src, &dst)?;
        if step == p.max_new_tokens || done.iter().all(|&d| d) {
            break;
        }
        // Decode one token for every beam of the groups still searching.
        let live: Vec<usize> = (0..n * nb).filter(|&s| !done[(s / nb) * ng + (s % nb) / gs]).collect();
        let x = dec.embed(&live.iter().map(|&s| current[s]).collect::<Vec<_>>())?;
        hidden = dec.forward(x, &live, &vec![1; live.len()], &mut cache)?;
        for &s in &live {
            work[s / nb] += 1;
        }
        row_of = vec![None; n * nb];
        for (r, &s) in live.iter().enumerate() {
            row_of[s] = Some(r);
        }
    }
    // BeamSearchScorer.finalize: open beams of unfinished groups become hypotheses.
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut all: Vec<(f64, Vec<u32>)> = Vec::new();
        for g in 0..ng {
            let gi = i * ng + g;
            if !done[gi] {
                for b in 0..gs {
                    let s = i * nb + g * gs + b;
                    hyps[gi].add(tokens[s].clone(), scores[s] as f64, tokens[s].len(), gs, p.length_penalty);
                }
            }
            all.append(&mut hyps[gi].beams);
        }
        all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        out.push((0..p.num_return_sequences).filter_map(|_| all.pop()).map(|(score, tokens)| Hypothesis { tokens, score }).collect());
    }
    Ok((out, work))
}

/// `torch.topk` order: higher score first; equal scores by lower flat index.
fn better(a: (f32, usize), b: (f32, usize)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}
