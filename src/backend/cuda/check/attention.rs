//! The inference attention checks (kernels/attention.cu): `attention` over a slotted KV cache
//! (decode, prefill, chunked prefill, vision, awkward head dims, NaN rows outside the cache) and
//! the split-KV path `attention_split` (+ `attention_combine`), against `cpu::attention_rows_f64`.

use super::io::{poisoned, upload, widen, Inputs};
use super::metric::{Case, Expected, Output, GUARD, POISON_BF16};
use crate::backend::cpu;
use crate::backend::cuda;
use crate::rng::Rng;

/// One attention check: H query heads over Hkv kv heads of dim D, a KV cache of `slots` slots of
/// `cap` rows, the query rows (valid key ranges), and `bad` rows outside the cache appended after
/// them (the kernel must write those as NaN rows). Buffers start at offset `off` (odd: the scalar
/// load path).
#[derive(Clone)]
pub(super) struct AttnShape {
    pub(super) name: String,
    h: usize,
    hkv: usize,
    d: usize,
    cap: usize,
    slots: usize,
    rows: Vec<cpu::AttnRow>,
    bad: Vec<cpu::AttnRow>,
    off: usize,
    /// How the op is launched (the split-KV count).
    launch: AttnLaunch,
}

/// How an attention check calls the op: `attention` (split count from cap),
/// `attention_with_max_len` (from the longest valid range), or a forced split count.
#[derive(Clone, Copy, Debug)]
enum AttnLaunch {
    Cap,
    MaxLen,
    Splits(usize),
}

pub(super) fn attention_shapes() -> Vec<AttnShape> {
    use cpu::{AttnMask, AttnRow};
    let row = |slot: u32, kv_start: u32, kv_end: u32| AttnRow { slot, kv_start, kv_end };
    let causal = AttnMask::Causal { window: None };
    let shape = |name: String, (h, hkv, d): (usize, usize, usize), cap: usize, slots: usize, rows: Vec<AttnRow>| AttnShape {
        name: format!("{name} H={h} Hkv={hkv} D={d}"),
        h,
        hkv,
        d,
        cap,
        slots,
        rows,
        bad: Vec::new(),
        off: GUARD,
        launch: AttnLaunch::Cap,
    };
    let mistral = (32, 8, 128);
    // Emulated: the prefill shapes with 8 of Mistral's heads (groups of 4 still), fewer rows.
    let prefill_heads = super::io::sized(mistral, (8, 2, 128));
    let clip = (16, 16, 64);
    let mut v = Vec::new();
    // Batched decode: 4 sequences of lengths 1, 17, 300, 1000 in 4 slots (not in slot order), one
    // query row each (the newest position, which sees the whole sequence).
    let (lens, cap) = super::io::sized(([(2u32, 1u32), (0, 17), (3, 300), (1, 1000)], 1024), ([(2, 1), (0, 17), (3, 130), (1, 300)], 320));
    let name = format!("decode lens {} in 4 slots cap {cap}", lens.iter().map(|l| l.1.to_string()).collect::<Vec<_>>().join(","));
    v.push(shape(name, mistral, cap, 4, lens.iter().map(|&(s, n)| row(s, 0, n)).collect()));
    // Prefill of T=333 (emulated: 100), causal; the second half of the rows with a sliding window
    // of 64 keys (emulated: 24).
    let (t, w, cap) = super::io::sized((333usize, 64usize, 400usize), (100, 24, 128));
    let rows = (0..t).map(|p| AttnRow::for_mask(if p < t.div_ceil(2) { causal } else { AttnMask::Causal { window: Some(w) } }, 0, p, t)).collect();
    v.push(shape(format!("prefill T={t} causal, rows {}.. window {w}, cap {cap}", t.div_ceil(2)), prefill_heads, cap, 1, rows));
    // Chunked prefill: positions 100..140 of a sequence in slot 1 whose cache holds 140 keys.
    let rows = (100..140).map(|p| AttnRow::for_mask(causal, 1, p, 140)).collect();
    v.push(shape("chunked prefill pos 100..140 of 140, slot 1 of 2, cap 256".into(), prefill_heads, 256, 2, rows));
    // CLIP ViT-L/14-336: 2 images of 577 tokens as 2 slots, bidirectional, every key of its
    // image for each row. At T=577 only every 3rd token's query row (alternating offsets per
    // image) keeps the host references fast (rows are independent in the kernel); T=97 has all.
    // Emulated: T=97 alone.
    let vision: &[(u32, usize, usize)] = super::io::sized(&[(577, 577, 3), (97, 100, 1)], &[(97, 100, 1)]);
    for &(t, cap, step) in vision {
        let rows = (0..2u32).flat_map(|s| (s % step as u32..t).step_by(step).map(move |_| row(s, 0, t))).collect();
        let every = if step > 1 { format!(", 1 in {step} query rows") } else { String::new() };
        v.push(shape(format!("vision 2 images T={t} bidirectional{every}, cap {cap}"), clip, cap, 2, rows));
    }
    // Awkward head dims: D=80 with H=Hkv causal; D=96 with groups of 3 (3 heads per block) over
    // lengths around the 64-key tile.
    let rows = (0..45).map(|p| AttnRow::for_mask(causal, 0, p, 45)).collect();
    v.push(shape("causal T=45, cap 64".into(), (12, 12, 80), 64, 1, rows));
    let rows = vec![row(0, 0, 5), row(1, 0, 64), row(2, 0, 65), row(3, 0, 129), row(1, 1, 64), row(3, 63, 129)];
    v.push(shape("ranges 5,64,65,129 in 4 slots, cap 130".into(), (12, 4, 96), 130, 4, rows));
    // An empty range (zero row), a single key, the last key of a slot, and three rows outside the
    // cache (slot >= S, kv_end > cap, kv_start > kv_end): NaN rows.
    let mut a = shape("empty range + 3 rows outside the cache, 3 slots cap 50".into(), (8, 2, 64), 50, 3, vec![row(0, 0, 50), row(1, 10, 10), row(2, 49, 50), row(1, 3, 20), row(2, 0, 0)]);
    a.bad = vec![row(3, 0, 5), row(0, 0, 51), row(0, 7, 6)];
    v.push(a);
    // Multi-query (groups of 16: two blocks of 8 heads per kv head) on misaligned buffers.
    let mut a = shape("MQA ranges in 2 slots, cap 70".into(), (16, 1, 64), 70, 2, vec![row(0, 0, 70), row(1, 0, 33), row(0, 5, 69), row(1, 0, 1)]);
    a.off = 1;
    a.name.push_str(" misaligned");
    v.push(a);
    v
}

/// The split-KV checks (`attention_split` + `attention_combine`, or the heuristic's choice):
/// decode-shaped rows (one query row per sequence, batch 1 to 64) at context lengths 1, 17, 128,
/// 1000, 4096 and 32768, GQA groups 1, 4 and 8, D 8, 24, 64 and 128, forced split counts 1, 2,
/// 7 and the maximum (far more splits than key tiles: empty splits), the heuristic's count from
/// cap and from the longest range, a prefill-shaped case, empty ranges and rows outside the cache,
/// and misaligned buffers (plain loads instead of cp.async). Long contexts use few heads so that
/// the host references stay fast.
pub(super) fn attention_split_shapes() -> Vec<AttnShape> {
    use cuda::ATTENTION_SPLITS_MAX as MAX;
    use cpu::{AttnMask, AttnRow};
    let row = |slot: u32, kv_start: u32, kv_end: u32| AttnRow { slot, kv_start, kv_end };
    let shape = |name: &str, (h, hkv, d): (usize, usize, usize), cap: usize, slots: usize, rows: Vec<AttnRow>, launch: AttnLaunch| {
        let how = match launch {
            AttnLaunch::Cap => "splits from cap".to_string(),
            AttnLaunch::MaxLen => "splits from the longest range".to_string(),
            AttnLaunch::Splits(n) => format!("splits {n}"),
        };
        AttnShape { name: format!("{name} H={h} Hkv={hkv} D={d}, {how}"), h, hkv, d, cap, slots, rows, bad: Vec::new(), off: GUARD, launch }
    };
    let mut v = Vec::new();
    // Batched decode in 5 slots (not in slot order): lengths 1, 17, 128, 1000 and an empty range,
    // Mistral-7B heads (groups of 4), plus three rows outside the cache (NaN rows).
    // Emulated: 8 heads (groups of 4) and lengths up to 300.
    let (heads, long, cap) = super::io::sized(((32, 8, 128), 1000u32, 1024usize), ((8, 2, 128), 300, 320));
    for n in [1, 2, 7, MAX] {
        let rows = vec![row(3, 0, 1), row(0, 0, 17), row(4, 0, 128), row(1, 0, long), row(2, 0, 0)];
        let mut a = shape(&format!("decode lens 1,17,128,{long},0 + 3 bad rows, cap {cap}"), heads, cap, 5, rows, AttnLaunch::Splits(n));
        a.bad = vec![row(5, 0, 1), row(0, 0, cap as u32 + 1), row(1, 9, 8)];
        v.push(a);
    }
    // One sequence of 4096 keys, groups of 8 (one block of 8 heads per kv head).
    for l in [AttnLaunch::MaxLen, AttnLaunch::Splits(7), AttnLaunch::Splits(MAX)] {
        v.push(shape("decode B=1 ctx 4096", (8, 1, 128), 4096, 1, vec![row(0, 0, 4096)], l));
    }
    // One sequence of 32768 keys (issue #4's long context), groups of 4 over 2 kv heads
    // (emulated: 2048 keys).
    let ctx = super::io::sized(32768u32, 2048);
    for l in [AttnLaunch::MaxLen, AttnLaunch::Splits(2)] {
        v.push(shape(&format!("decode B=1 ctx {ctx}"), (8, 2, 128), ctx as usize, 1, vec![row(0, 0, ctx)], l));
    }
    // No grouping (H = Hkv), D=64: two sequences of 4096, one seen through a window [1000, 4096).
    for l in [AttnLaunch::Cap, AttnLaunch::Splits(7)] {
        v.push(shape("decode B=2 ctx 4096, one range [1000, 4096)", (4, 4, 64), 4096, 2, vec![row(1, 0, 4096), row(0, 1000, 4096)], l));
    }
    // Batch 8 of ragged lengths up to 4096, groups of 4, D=128.
    // (Emulated: lengths up to 1024.)
    let (lens, cap): (Vec<u32>, u32) = super::io::sized((vec![4096, 1, 3000, 17, 129, 2048, 64, 4000], 4096), (vec![1024, 1, 750, 17, 129, 512, 64, 1000], 1024));
    for l in [AttnLaunch::MaxLen, AttnLaunch::Splits(7)] {
        let rows = lens.iter().enumerate().map(|(s, &n)| row(s as u32, 0, n)).collect();
        v.push(shape(&format!("decode B=8 ragged lens <= {cap}, cap {cap}"), (8, 2, 128), cap as usize, 8, rows, l));
    }
    // Batch 64 (slots in reverse order), lengths 1..=1000 (emulated: 1..=200), groups of 8, D=128.
    let cap = super::io::sized(1000u32, 200);
    for l in [AttnLaunch::MaxLen, AttnLaunch::Splits(2)] {
        let rows = (0..64u32).map(|i| row(63 - i, 0, 1 + (i * i * 37 + 11 * i) % cap)).collect();
        v.push(shape(&format!("decode B=64 lens 1..={cap}, cap {cap}"), (8, 1, 128), cap as usize, 64, rows, l));
    }
    // Prefill-shaped: T=200 causal, rows 100.. with a window of 48 keys, Mistral-7B heads.
    // Emulated: T=100, rows 50.. window 24, 8 heads (groups of 4), and 17 splits instead of the
    // maximum (still more splits than the 4 key tiles of the longest row: empty splits).
    let (t, w, heads, splits) = super::io::sized((200usize, 48usize, (32, 8, 128), [3, MAX]), (100, 24, (8, 2, 128), [3, 17]));
    let causal = AttnMask::Causal { window: None };
    for n in splits {
        let rows = (0..t).map(|p| AttnRow::for_mask(if p < t / 2 { causal } else { AttnMask::Causal { window: Some(w) } }, 0, p, t)).collect();
        v.push(shape(&format!("prefill T={t} causal, rows {}.. window {w}, cap 256", t / 2), heads, 256, 1, rows, AttnLaunch::Splits(n)));
    }
    // Multi-query (groups of 16: two blocks of 8 heads) on misaligned buffers (plain loads), and
    // the smallest head dims (D=8: 32 key lanes in P.V; D=24: an odd number of 16-byte chunks).
    let mut a = shape("MQA ranges in 2 slots, cap 700", (16, 1, 64), 700, 2, vec![row(0, 0, 700), row(1, 0, 33), row(0, 5, 669), row(1, 0, 1)], AttnLaunch::Splits(5));
    a.off = 1;
    a.name.push_str(" misaligned");
    v.push(a);
    for (dims, n) in [((4, 2, 8), 3), ((6, 2, 24), MAX)] {
        v.push(shape("ranges 1,31,32,33,500 in 3 slots, cap 500", dims, 500, 3, vec![row(0, 0, 1), row(1, 0, 31), row(2, 0, 32), row(0, 467, 500), row(1, 0, 500)], AttnLaunch::Splits(n)));
    }
    v
}

pub(super) fn attention_case(a: &AttnShape, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let AttnShape { h, hkv, d, cap, slots, off, launch, .. } = *a;
    let max_len = a.rows.iter().map(|r| (r.kv_end - r.kv_start) as usize).max().unwrap_or(0);
    let (qw, kw) = (h * d, hkv * d);
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let all_rows: Vec<cpu::AttnRow> = a.rows.iter().chain(&a.bad).copied().collect();
    // Queries up to 3 in magnitude: scores of std ~1-3, softmax rows from flat to peaked. The
    // whole cache is random, so a key read outside a row's range changes its output.
    let q = rng.bf16s(all_rows.len() * qw, 0.01, 3.0);
    let k = rng.bf16s(slots * cap * kw, 0.01, 2.0);
    let v = rng.bf16s(slots * cap * kw, 0.01, 2.0);
    let good = a.rows.len() * qw;
    let (qf, kf, vf) = (widen(&q[..good]), widen(&k), widen(&v));
    let mut expect = vec![Expected::Close {
        name: "out",
        reference: cpu::attention_rows_f64(&qf, &kf, &vf, &a.rows, h, hkv, d, cap, scale),
        cpu: cpu::attention_rows(&qf, &kf, &vf, &a.rows, h, hkv, d, cap, scale),
    }];
    if !a.bad.is_empty() {
        expect.push(Expected::Bf16 { name: "out (rows outside the cache)", bits: vec![0x7FC0; a.bad.len() * qw] });
    }
    let (nq, nk) = (q.len(), k.len());
    Case {
        expect,
        device: Box::new(move |dev| {
            let dq = upload(dev, &q, off, POISON_BF16)?;
            let dk = upload(dev, &k, off, POISON_BF16)?;
            let dv = upload(dev, &v, off, POISON_BF16)?;
            let drows = dev.htod(bytemuck::cast_slice::<cpu::AttnRow, u32>(&all_rows))?;
            let mut dout = poisoned(dev, nq, off, POISON_BF16)?;
            let (q_, k_, v_, r_, mut o_) = (dq.slice(off..off + nq), dk.slice(off..off + nk), dv.slice(off..off + nk), drows.as_view(), dout.slice_mut(off..off + nq));
            match launch {
                AttnLaunch::Cap => dev.attention(&q_, &k_, &v_, &r_, &mut o_, h, hkv, d, cap, scale)?,
                AttnLaunch::MaxLen => dev.attention_with_max_len(&q_, &k_, &v_, &r_, &mut o_, h, hkv, d, cap, scale, max_len)?,
                AttnLaunch::Splits(n) => dev.attention_forced_splits(&q_, &k_, &v_, &r_, &mut o_, h, hkv, d, cap, scale, n)?,
            }
            let all = dev.dtoh(&dout)?;
            if good == nq {
                return Ok(vec![Output::Bf16 { all, lo: off, n: nq }]);
            }
            // Two outputs of one buffer: each keeps the real guard on its outer side and gets a
            // synthetic (poisoned) one where the other part continues.
            let split = off + good;
            let mut first = all[..split].to_vec();
            first.extend(std::iter::repeat_n(POISON_BF16, GUARD));
            let mut second = vec![POISON_BF16; GUARD];
            second.extend_from_slice(&all[split..]);
            Ok(vec![Output::Bf16 { all: first, lo: off, n: good }, Output::Bf16 { all: second, lo: GUARD, n: nq - good }])
        }),
    }
}
