//! CSR's sentence tree on token ids: the search (official sample.py
//! `sentence_level_beam_search_tree`), the cleaning and sentence scores (score.py, utils.py
//! `clean_tree`, `Rank_Node.calculate_ranks`) and the pair (construct.py). Facts with their
//! sources and every difference from the official code: docs/CSR.md.
//!
//! Search: every active node is expanded by one diverse beam search from its context (prompt +
//! image + the sentences on its path); each returned hypothesis becomes a child with
//! `score = parent.score + sequences_score`. A child is final when it holds the model's EOS or
//! when prompt + path, decoded with special tokens, reaches `max_chars` characters. The non-final
//! children of all active nodes are pooled, sorted by score (best first, stable) and, when there
//! are at least `prune_min`, only the first `keep_top` and the last `keep_bottom` are expanded.
//!
//! KV reuse: with `kv_reuse`, an expanded child's context is its parent's KV cache continued by the
//! child's tokens (no new prefill of the image and the shared context); without it, every
//! expansion prefills its whole context, as the official code (one `generate` per node) does.

use crate::backend::{Backend, Rows};
use crate::error::Result;
use crate::generate::Pipeline;

use super::beam::{extend, group_beam_search, prefill, GroupBeamParams, Prefix};
use super::clean::{clean_text, is_junk};

/// The search's settings (official defaults in `TreeParams::csr`).
#[derive(Clone, Debug)]
pub struct TreeParams {
    pub beam: GroupBeamParams,
    /// Tokens that make a child final (the model's EOS, `</s>`).
    pub final_ids: Vec<u32>,
    /// A child is final once prompt + path decode to this many characters (sample.py `max_length`).
    pub max_chars: usize,
    /// Pruning: expand the best `keep_top` and worst `keep_bottom` pooled non-final children when
    /// there are at least `prune_min` (sample.py: `[:5//2-1] + [-(5//2):]` when >= `num_beams` 5).
    pub keep_top: usize,
    pub keep_bottom: usize,
    pub prune_min: usize,
    /// Safety bound on the tree's depth (not in the official code; `None`: unbounded).
    pub max_depth: Option<usize>,
    pub kv_reuse: bool,
}

impl TreeParams {
    pub fn csr(sentence_end: u32, pad: u32, final_ids: Vec<u32>) -> Self {
        TreeParams {
            beam: GroupBeamParams::csr(sentence_end, pad),
            final_ids,
            max_chars: 1024,
            keep_top: 1,
            keep_bottom: 2,
            prune_min: 5,
            max_depth: None,
            kv_reuse: true,
        }
    }
}

/// One sentence node; node 0 is the root (the prompt).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    /// The sentence's token ids (cut after the first final id).
    pub tokens: Vec<u32>,
    /// The beam search's `sequences_scores` entry of this sentence.
    pub step_score: f64,
    /// Cumulative LM score: the parent's plus `step_score`.
    pub score: f64,
    pub depth: usize,
    pub is_final: bool,
    /// Decoded (special tokens skipped), stripped and `clean_text`-ed new text.
    pub text: String,
    /// Survives `clean_tree` and the 4-character minimum (takes part in ranks and paths).
    pub kept: bool,
    pub clip: Option<f32>,
    pub rank_t: Option<f64>,
    pub rank_i: Option<f64>,
}

/// A searched tree and what the search cost.
pub struct Tree {
    pub nodes: Vec<Node>,
    /// Beam search calls (one per level), decoded beam-tokens, and candidates (children) made.
    pub calls: usize,
    pub decoded: usize,
    pub candidates: usize,
}

/// Build the tree for one prompt: `prompt_ids` (BOS first, one `<image>`) with the image features
/// `x` already in (`Pipeline::embed`).
pub fn search<B: Backend>(pipe: &Pipeline<B>, prompt_ids: &[u32], x: B::Tensor, p: &TreeParams) -> Result<Tree> {
    Ok(search_many(pipe, vec![(prompt_ids.to_vec(), x)], p)?.pop().expect("one tree"))
}

/// One tree being built.
struct Growing<B: Backend> {
    prompt_ids: Vec<u32>,
    /// The root's embeddings, kept for the fresh prefills when KV reuse is off.
    root_x: Option<B::Tensor>,
    nodes: Vec<Node>,
    active: Vec<usize>,
    /// The KV state of each active node (KV reuse: made when the node is kept).
    states: Vec<(usize, Prefix<B>)>,
    calls: usize,
    decoded: usize,
    candidates: usize,
}

/// Build the trees of several prompts at once: every level expands the active nodes of all the
/// trees in one batched beam search (and, with KV reuse, continues their caches in one call).
pub fn search_many<B: Backend>(pipe: &Pipeline<B>, prompts: Vec<(Vec<u32>, B::Tensor)>, p: &TreeParams) -> Result<Vec<Tree>> {
    let dec = &pipe.model.decoder;
    let be = dec.backend();
    let extra = p.beam.max_new_tokens;
    let mut trees: Vec<Growing<B>> = Vec::with_capacity(prompts.len());
    let mut roots = Vec::new();
    for (prompt_ids, x) in prompts {
        let (root_x, x) = if p.kv_reuse { (None, Some(x)) } else { (Some(x), None) };
        roots.extend(x);
        let nodes = vec![Node { kept: true, ..Default::default() }];
        trees.push(Growing { prompt_ids, root_x, nodes, active: vec![0], states: Vec::new(), calls: 0, decoded: 0, candidates: 0 });
    }
    if p.kv_reuse {
        for (t, s) in trees.iter_mut().zip(prefill(dec, roots, extra)?) {
            t.states = vec![(0, s)];
        }
    }
    loop {
        // (tree, node) of every expansion of this level, tree by tree.
        let jobs: Vec<(usize, usize)> = trees.iter().enumerate().flat_map(|(ti, t)| t.active.iter().map(move |&n| (ti, n))).collect();
        if jobs.is_empty() {
            break;
        }
        if !p.kv_reuse {
            // Prefill each active node's whole context (image, prompt, its path's sentences).
            let xs = jobs
                .iter()
                .map(|&(ti, n)| {
                    let t = &trees[ti];
                    let root = t.root_x.as_ref().expect("kept without reuse");
                    let path = path_tokens(&t.nodes, n);
                    if path.is_empty() {
                        return be.embedding(root, None, &(0..root.n_rows() as u32).collect::<Vec<_>>());
                    }
                    be.concat_rows(&[root, &dec.embed(&path)?])
                })
                .collect::<Result<Vec<_>>>()?;
            let mut fresh = prefill(dec, xs, extra)?.into_iter();
            for t in trees.iter_mut() {
                t.states = t.active.iter().map(|&n| (n, fresh.next().expect("a state per job"))).collect();
            }
        }
        let refs: Vec<&Prefix<B>> = jobs.iter().map(|&(ti, n)| &trees[ti].states.iter().find(|(m, _)| *m == n).expect("a state per active node").1).collect();
        let (hyps, work) = group_beam_search(dec, &refs, &p.beam)?;
        let mut opens: Vec<Vec<usize>> = vec![Vec::new(); trees.len()];
        for ((&(ti, a), hs), w) in jobs.iter().zip(hyps).zip(work) {
            let t = &mut trees[ti];
            t.decoded += w;
            for h in hs {
                t.candidates += 1;
                let mut tokens = h.tokens;
                let has_final = tokens.iter().position(|x| p.final_ids.contains(x));
                if let Some(i) = has_final {
                    tokens.truncate(i + 1);
                }
                let mut all = t.prompt_ids.clone();
                all.extend(path_tokens(&t.nodes, a));
                all.extend(&tokens);
                let chars = pipe.tokenizer.decode(&all, false)?.chars().count();
                let depth = t.nodes[a].depth + 1;
                let is_final = has_final.is_some() || chars >= p.max_chars || p.max_depth.is_some_and(|d| depth >= d);
                let text = clean_text(pipe.tokenizer.decode(&tokens, true)?.trim());
                let id = t.nodes.len();
                let score = t.nodes[a].score + h.score;
                t.nodes.push(Node { parent: Some(a), tokens, step_score: h.score, score, depth, is_final, text, ..Default::default() });
                t.nodes[a].children.push(id);
                if !is_final {
                    opens[ti].push(id);
                }
            }
        }
        for (t, open) in trees.iter_mut().zip(opens) {
            if !t.active.is_empty() {
                t.calls += 1;
            }
            t.active = prune(&t.nodes, open, p);
        }
        if p.kv_reuse {
            let kept: Vec<(usize, usize)> = trees.iter().enumerate().flat_map(|(ti, t)| t.active.iter().map(move |&n| (ti, n))).collect();
            let parents: Vec<&Prefix<B>> = kept
                .iter()
                .map(|&(ti, n)| {
                    let t = &trees[ti];
                    &t.states.iter().find(|(m, _)| Some(*m) == t.nodes[n].parent).expect("the parent's state").1
                })
                .collect();
            let toks: Vec<Vec<u32>> = kept.iter().map(|&(ti, n)| trees[ti].nodes[n].tokens.clone()).collect();
            let mut next = extend(dec, &parents, &toks, extra)?.into_iter();
            for t in trees.iter_mut() {
                t.states = t.active.iter().map(|&n| (n, next.next().expect("a state per kept node"))).collect();
            }
        }
    }
    Ok(trees.into_iter().map(|t| Tree { nodes: t.nodes, calls: t.calls, decoded: t.decoded, candidates: t.candidates }).collect())
}

/// The tokens of the sentences from the root to `n` (root excluded).
pub fn path_tokens(nodes: &[Node], n: usize) -> Vec<u32> {
    let mut chain = Vec::new();
    let mut at = Some(n);
    while let Some(i) = at {
        chain.push(i);
        at = nodes[i].parent;
    }
    chain.iter().rev().flat_map(|&i| nodes[i].tokens.iter().copied()).collect()
}

/// sample.py's pruning of the pooled non-final children (stable sort by score, best first).
pub fn prune(nodes: &[Node], mut open: Vec<usize>, p: &TreeParams) -> Vec<usize> {
    open.sort_by(|&a, &b| nodes[b].score.partial_cmp(&nodes[a].score).unwrap_or(std::cmp::Ordering::Equal));
    if open.len() < p.prune_min {
        return open;
    }
    let n = open.len();
    let mut keep: Vec<usize> = open[..p.keep_top.min(n)].to_vec();
    keep.extend(&open[n - p.keep_bottom.min(n)..]);
    keep
}

/// score.py: `clean_tree` (a junk child goes with its subtree) and the 4-character minimum; marks
/// `kept` on the surviving nodes and returns them (root excluded) in tree order.
pub fn clean(nodes: &mut [Node], max_newlines: usize, min_chars: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut stack = vec![0usize];
    while let Some(n) = stack.pop() {
        for &c in nodes[n].children.clone().iter().rev() {
            let t = &nodes[c].text;
            if !is_junk(t, max_newlines) && t.chars().count() >= min_chars {
                nodes[c].kept = true;
                stack.push(c);
            }
        }
        if n != 0 {
            out.push(n);
        }
    }
    out
}

/// `Rank_Node.calculate_ranks` over the kept children of every node: 1-based position / n when
/// sorted best first (stable), by LM score and by CLIP score.
pub fn rank(nodes: &mut [Node]) {
    for n in 0..nodes.len() {
        let kids: Vec<usize> = nodes[n].children.iter().copied().filter(|&c| nodes[c].kept).collect();
        let total = kids.len() as f64;
        let mut by_t = kids.clone();
        by_t.sort_by(|&a, &b| nodes[b].score.partial_cmp(&nodes[a].score).unwrap_or(std::cmp::Ordering::Equal));
        for (i, &c) in by_t.iter().enumerate() {
            nodes[c].rank_t = Some((i + 1) as f64 / total);
        }
        let mut by_i = kids;
        by_i.sort_by(|&a, &b| nodes[b].clip.partial_cmp(&nodes[a].clip).unwrap_or(std::cmp::Ordering::Equal));
        for (i, &c) in by_i.iter().enumerate() {
            nodes[c].rank_i = Some((i + 1) as f64 / total);
        }
    }
}

/// How sentences and paths are scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reward {
    /// construct.py: cost (1-α) rank_T + α rank_I, path mean = sum / (sentences + 1), chosen = the
    /// lowest, rejected = the highest.
    Code { alpha: f64 },
    /// The paper: R = λ max(R_I, 0) + (1-λ) R_T with R_T = exp(summed log-prob of the sentence),
    /// summed over the path; chosen = the highest, rejected = the lowest.
    Paper { lambda: f64 },
}

impl Reward {
    /// `code` (ranks, construct.py) or `paper` (raw scores), weighting CLIP by `alpha` (λ).
    pub fn parse(name: &str, alpha: f64) -> std::result::Result<Self, String> {
        match name {
            "code" => Ok(Reward::Code { alpha }),
            "paper" => Ok(Reward::Paper { lambda: alpha }),
            other => Err(format!("expected code or paper, got `{other}`")),
        }
    }
}

/// A complete path (root excluded) and its value under the reward.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PathValue {
    pub nodes: Vec<usize>,
    pub value: f64,
}

/// Every complete path through kept nodes (DFS, children in generation order), valued.
pub fn paths(nodes: &[Node], reward: Reward, length_penalty: f64) -> Vec<PathValue> {
    let sentence = |n: &Node| match reward {
        Reward::Code { alpha } => (1.0 - alpha) * n.rank_t.unwrap_or(0.0) + alpha * n.rank_i.unwrap_or(0.0),
        Reward::Paper { lambda } => {
            let r_t = (n.step_score * (n.tokens.len() as f64).powf(length_penalty)).exp();
            lambda * (n.clip.unwrap_or(0.0) as f64).max(0.0) + (1.0 - lambda) * r_t
        }
    };
    let mut out = Vec::new();
    let mut stack: Vec<(usize, Vec<usize>, f64)> = vec![(0, Vec::new(), 0.0)];
    while let Some((n, path, sum)) = stack.pop() {
        if n != 0 && nodes[n].is_final {
            let value = match reward {
                Reward::Code { .. } => sum / (path.len() + 1) as f64,
                Reward::Paper { .. } => sum,
            };
            out.push(PathValue { nodes: path, value });
            continue;
        }
        for &c in nodes[n].children.iter().rev().filter(|&&c| nodes[c].kept) {
            let mut p = path.clone();
            p.push(c);
            stack.push((c, p, sum + sentence(&nodes[c])));
        }
    }
    out
}

/// construct.py's choice: sort the paths by value (stable); code: chosen = first (lowest cost),
/// rejected = last; paper: the reverse (highest reward chosen). `None` without a complete path.
pub fn pick(paths: &[PathValue], reward: Reward) -> Option<(usize, usize)> {
    if paths.is_empty() {
        return None;
    }
    let mut order: Vec<usize> = (0..paths.len()).collect();
    order.sort_by(|&a, &b| paths[a].value.partial_cmp(&paths[b].value).unwrap_or(std::cmp::Ordering::Equal));
    let (first, last) = (order[0], order[order.len() - 1]);
    Some(match reward {
        Reward::Code { .. } => (first, last),
        Reward::Paper { .. } => (last, first),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(parent: usize, score: f64, clip: f32, is_final: bool) -> Node {
        Node { parent: Some(parent), score, clip: Some(clip), is_final, kept: true, text: "some sentence".into(), ..Default::default() }
    }

    fn tree(spec: &[(usize, f64, f32, bool)]) -> Vec<Node> {
        let mut nodes = vec![Node { kept: true, ..Default::default() }];
        for &(p, s, c, f) in spec {
            let id = nodes.len();
            nodes.push(node(p, s, c, f));
            nodes[p].children.push(id);
        }
        nodes
    }

    #[test]
    fn pruning_keeps_top_one_and_bottom_two() {
        let nodes = tree(&[(0, -1.0, 0.0, false), (0, -5.0, 0.0, false), (0, -2.0, 0.0, false), (0, -4.0, 0.0, false), (0, -3.0, 0.0, false), (0, -3.0, 0.0, false)]);
        let p = TreeParams::csr(0, 0, vec![2]);
        // sorted best first: 1 (-1), 3 (-2), 5 (-3), 6 (-3), 4 (-4), 2 (-5): keep 1, then 4 and 2
        assert_eq!(prune(&nodes, vec![1, 2, 3, 4, 5, 6], &p), vec![1, 4, 2]);
        // fewer than 5: all, best first
        assert_eq!(prune(&nodes, vec![2, 3, 1], &p), vec![1, 3, 2]);
    }

    #[test]
    fn ranks_costs_and_the_pair_follow_construct_py() {
        // root -> a (final), b -> {c (final), d (final)}
        let mut nodes = tree(&[(0, -1.0, 20.0, true), (0, -2.0, 30.0, false), (2, -3.0, 25.0, true), (2, -2.5, 10.0, true)]);
        rank(&mut nodes);
        assert_eq!((nodes[1].rank_t, nodes[1].rank_i), (Some(0.5), Some(1.0)));
        assert_eq!((nodes[2].rank_t, nodes[2].rank_i), (Some(1.0), Some(0.5)));
        assert_eq!((nodes[3].rank_t, nodes[3].rank_i), (Some(1.0), Some(0.5)));
        assert_eq!((nodes[4].rank_t, nodes[4].rank_i), (Some(0.5), Some(1.0)));
        let ps = paths(&nodes, Reward::Code { alpha: 0.9 }, 1.0);
        let vals: Vec<(Vec<usize>, f64)> = ps.iter().map(|p| (p.nodes.clone(), p.value)).collect();
        // a: 0.1*0.5 + 0.9*1.0 = 0.95 over 2; b+c: (0.1 + 0.45) + (0.1 + 0.45) = 1.1 over 3;
        // b+d: 0.55 + (0.05 + 0.9) = 1.5 over 3
        let want = [(vec![1], 0.95 / 2.0), (vec![2, 3], 1.1 / 3.0), (vec![2, 4], 1.5 / 3.0)];
        for ((gn, gv), (wn, wv)) in vals.iter().zip(&want) {
            assert_eq!(gn, wn);
            assert!((gv - wv).abs() < 1e-12, "{gv} vs {wv}");
        }
        assert_eq!(pick(&ps, Reward::Code { alpha: 0.9 }), Some((1, 2)));
        // ties: equal CLIP scores keep generation order (stable)
        let mut t = tree(&[(0, -1.0, 5.0, true), (0, -1.0, 5.0, true)]);
        rank(&mut t);
        assert_eq!((t[1].rank_i, t[2].rank_i), (Some(0.5), Some(1.0)));
        assert_eq!((t[1].rank_t, t[2].rank_t), (Some(0.5), Some(1.0)));
        // equal path costs: chosen is the first, rejected the last
        let ps = vec![PathValue { nodes: vec![1], value: 0.5 }, PathValue { nodes: vec![2], value: 0.5 }];
        assert_eq!(pick(&ps, Reward::Code { alpha: 0.9 }), Some((0, 1)));
        assert_eq!(pick(&[], Reward::Code { alpha: 0.9 }), None);
    }

    #[test]
    fn cleaning_drops_junk_subtrees_and_short_sentences() {
        let mut nodes = tree(&[(0, -1.0, 0.0, false), (0, -1.0, 0.0, true), (1, -1.0, 0.0, true), (0, -1.0, 0.0, true)]);
        for n in &mut nodes[1..] {
            n.kept = false;
        }
        nodes[1].text = "a a a a a a".into();
        nodes[4].text = "abc".into();
        let kept = clean(&mut nodes, 5, 4);
        assert_eq!(kept, vec![2]);
        assert!(!nodes[3].kept, "a junk node's child goes too");
    }

    #[test]
    fn paper_reward_sums_and_prefers_the_highest() {
        let mut nodes = tree(&[(0, 0.0, 20.0, true), (0, 0.0, -5.0, true)]);
        nodes[1].step_score = -1.0;
        nodes[1].tokens = vec![7, 7];
        nodes[2].step_score = -0.5;
        nodes[2].tokens = vec![7];
        let ps = paths(&nodes, Reward::Paper { lambda: 0.9 }, 1.0);
        assert!((ps[0].value - (0.9 * 20.0 + 0.1 * (-2.0f64).exp())).abs() < 1e-12);
        assert!((ps[1].value - 0.1 * (-0.5f64).exp()).abs() < 1e-12);
        assert_eq!(pick(&ps, Reward::Paper { lambda: 0.9 }), Some((0, 1)));
    }
}
