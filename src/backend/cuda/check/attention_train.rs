//! The training attention checks (kernels/attention_train.cu, kernels/attention_hopper.cu):
//! FlashAttention-2 forward (sm_80 `mma` and the Hopper kernel) and backward over packed
//! variable-length batches, against the f64 references and the CPU stand-ins
//! `cpu::attention_train_fwd_host` / `cpu::attention_train_bwd_emulated`.

use half::bf16;

use super::io::{download_bf16, poisoned, select_guarded, upload, widen, Inputs};
use super::metric::{f32_bits, Case, Expected, Output, GUARD, POISON_BF16, POISON_U32};
use crate::backend::cpu;
use crate::backend::cuda::{self, CudaView};
use crate::rng::Rng;

/// The mask of an `attention_train` check; shared-prefix pairs are per sequence.
#[derive(Clone)]
enum TrainMask {
    Bidirectional,
    Causal(Option<usize>),
    SharedPrefix(Vec<(usize, usize)>),
}

impl TrainMask {
    fn cpu(&self, b: usize) -> cpu::AttnMask {
        match self {
            TrainMask::Bidirectional => cpu::AttnMask::Bidirectional,
            TrainMask::Causal(window) => cpu::AttnMask::Causal { window: *window },
            TrainMask::SharedPrefix(pairs) => cpu::AttnMask::SharedPrefix { prefix: pairs[b].0, chosen: pairs[b].1 },
        }
    }
}

/// One `attention_train` check: sequences of `lens` packed, H query heads over Hkv kv heads of dim
/// D, forward (out, lse on every `step`-th row of each sequence and its last row) or backward
/// (dq, dk, dv on every row); buffers at offset `off` (odd: the kernels' unaligned paths).
/// `max_seqlen`: the value passed to the kernel (`None`: the longest sequence). The grid has
/// ceil(max_seqlen / tile) blocks per (head, sequence) and each block loops over the tiles
/// `blockIdx.x, blockIdx.x + gridDim.x, ...` of its sequence, so a smaller value makes that loop
/// run more than once (which an exact max_seqlen never does).
#[derive(Clone)]
pub(super) struct AttnTrainShape {
    pub(super) name: String,
    h: usize,
    hkv: usize,
    d: usize,
    lens: Vec<usize>,
    mask: TrainMask,
    pub(super) backward: bool,
    step: usize,
    pub(super) off: usize,
    max_seqlen: Option<usize>,
}

/// The forward and backward shapes. Under emulation (`super::sized`) the long sequences are cut to
/// a few hundred rows and the head counts of the larger cases to at most 8; every mask, GQA ratio
/// (1, 2, 4 also with 32 heads, MQA), D 64 and 128, ragged last tiles, several tiles per sequence and
/// the misaligned case stay. The `max_seqlen` cases (on the GPU too) make each block loop over
/// 2 to 5 tiles (forward: 64 query rows; backward: 64 keys).
pub(super) fn attention_train_shapes() -> Vec<AttnTrainShape> {
    let mut v = Vec::new();
    let mut add = |backward: bool, (h, hkv, d): (usize, usize, usize), lens: &[usize], mask: TrainMask, step: usize, off: usize, max_seqlen: Option<usize>| {
        let m = match &mask {
            TrainMask::Bidirectional => "bidirectional".to_string(),
            TrainMask::Causal(None) => "causal".to_string(),
            TrainMask::Causal(Some(w)) => format!("causal window {w}"),
            TrainMask::SharedPrefix(p) => format!("shared prefix {p:?}"),
        };
        let rows = if step > 1 { format!(", 1 in {step} rows checked") } else { String::new() };
        let mis = if !off.is_multiple_of(8) { " misaligned" } else { "" };
        let ms = max_seqlen.map(|n| format!(", max_seqlen {n} (blocks loop over tiles)")).unwrap_or_default();
        let name = format!("lens {lens:?} {m} H={h} Hkv={hkv} D={d}{rows}{mis}{ms}");
        v.push(AttnTrainShape { name, h, hkv, d, lens: lens.to_vec(), mask, backward, step, off, max_seqlen });
    };
    let causal = TrainMask::Causal(None);
    for backward in [false, true] {
        // Mistral-7B heads (GQA 4) on short sequences; CLIP-like D=64 bidirectional; MQA.
        // (The backward of a lone 1-row sequence is dq = dk = 0 exactly: packed with another.)
        add(backward, (32, 8, 128), if backward { &[1, 17] } else { &[1] }, causal.clone(), 1, GUARD, None);
        add(backward, (32, 8, 128), &[17], causal.clone(), 1, GUARD, None);
        add(backward, super::io::sized((16, 16, 64), (8, 8, 64)), &[128], TrainMask::Bidirectional, 1, GUARD, None);
        add(backward, (4, 1, 128), &[128], TrainMask::Causal(Some(40)), 1, GUARD, None);
        // T = 1000 (emulated: 200 and 250): partial tiles, window, MQA (the backward's f64
        // reference is O(T^2 H D)).
        add(backward, (2, 1, 128), &[super::io::sized(1000, 200)], causal.clone(), 1, GUARD, None);
        let (t, w) = super::io::sized((1000, 100), (250, 70));
        add(backward, (4, 2, 64), &[t], TrainMask::Causal(Some(w)), 1, GUARD, None);
        // A packed batch of 3 sequences: plain, and DPO shared prefix (one pair (0, 0) = causal).
        let (lens, pairs): (&[usize], _) = super::io::sized((&[100, 37, 300], vec![(40, 30), (0, 0), (100, 120)]), (&[100, 37, 150], vec![(40, 30), (0, 0), (50, 60)]));
        add(backward, (8, 2, 64), lens, causal.clone(), 1, GUARD, None);
        add(backward, (8, 2, 64), lens, TrainMask::SharedPrefix(pairs), 1, GUARD, None);
        add(backward, (4, 4, 128), &[70, 200], TrainMask::SharedPrefix(vec![(20, 25), (10, 130)]), 1, GUARD, None);
        add(backward, (4, 2, 64), &[70, 33], TrainMask::Bidirectional, 1, 1, None);
        // Blocks that handle several tiles: max_seqlen 64 gives one block per (head, sequence)
        // looping over all 4 tiles of 200 rows; 100 gives two blocks, over tiles 0, 2, 4 and 1, 3
        // of 300 rows (the last one ragged); 1 gives one block for every sequence, looping over
        // 3 tiles under the shared-prefix mask; 64 over 129 rows (a 1-row last tile), bidirectional.
        add(backward, (4, 2, 64), &[200, 70], causal.clone(), 1, GUARD, Some(64));
        add(backward, (2, 1, 128), &[300, 37], TrainMask::Causal(Some(100)), 1, GUARD, Some(100));
        add(backward, (4, 4, 64), &[150, 90], TrainMask::SharedPrefix(vec![(30, 50), (20, 30)]), 1, GUARD, Some(1));
        add(backward, (4, 4, 128), &[129], TrainMask::Bidirectional, 1, GUARD, Some(64));
    }
    if cuda::emulated() {
        // The long forwards, emulated: every row of 300 (causal) and of two sequences of 260 and
        // 100 (bidirectional).
        add(false, (4, 1, 128), &[300], causal.clone(), 1, GUARD, None);
        add(false, (2, 2, 64), &[260, 100], TrainMask::Bidirectional, 1, GUARD, None);
    } else {
        // A long forward: T = 4096 causal, the reference on every 64th row.
        add(false, (4, 1, 128), &[4096], causal.clone(), 64, GUARD, None);
        add(false, (2, 2, 64), &[4096, 1000], TrainMask::Bidirectional, 64, GUARD, None);
    }
    v
}

/// Forward shapes for the Hopper kernel only, around its 128-row query and key tiles: a causal
/// window that spans tile edges, a GQA 16:1 batch, the shared-prefix mask across tiles.
pub(super) fn attention_hopper_shapes() -> Vec<AttnTrainShape> {
    let shape = |(h, hkv, d): (usize, usize, usize), lens: &[usize], mask: TrainMask, m: String| AttnTrainShape {
        name: format!("lens {lens:?} {m} H={h} Hkv={hkv} D={d}"),
        h,
        hkv,
        d,
        lens: lens.to_vec(),
        mask,
        backward: false,
        step: 1,
        off: GUARD,
        max_seqlen: None,
    };
    vec![
        shape((8, 8, 128), &[129, 256, 383], TrainMask::Causal(Some(130)), "causal window 130".into()),
        shape((32, 2, 64), &[300, 513], TrainMask::Causal(None), "causal".into()),
        shape((4, 2, 128), &[255, 385], TrainMask::SharedPrefix(vec![(100, 60), (120, 140)]), "shared prefix [(100, 60), (120, 140)]".into()),
        shape((4, 4, 64), &[127, 1, 129], TrainMask::Bidirectional, "bidirectional".into()),
    ]
}

/// The `attention_train` case on the forward's sm_80 kernel (the backward has one kernel).
pub(super) fn attention_train_case(a: &AttnTrainShape, seed: u64) -> Case {
    attention_train_case_with(a, cuda::AttnFwdKernel::Mma, seed)
}

/// An `attention_train` case whose forward runs on `kernel`.
pub(super) fn attention_train_case_with(a: &AttnTrainShape, kernel: cuda::AttnFwdKernel, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let AttnTrainShape { h, hkv, d, off, .. } = *a;
    let (qw, kw) = (h * d, hkv * d);
    let cu = cpu::cu_seqlens(&a.lens);
    let t = *cu.last().unwrap() as usize;
    let masks: Vec<cpu::AttnMask> = (0..a.lens.len()).map(|b| a.mask.cpu(b)).collect();
    let packed = cpu::VarlenBatch { lens: &a.lens, masks: &masks, h, hkv, d };
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    // Scores of std ~1-3 (softmax rows from flat to peaked), as the inference attention checks.
    let q = rng.bf16s(t * qw, 0.01, 3.0);
    let k = rng.bf16s(t * kw, 0.01, 2.0);
    let v = rng.bf16s(t * kw, 0.01, 2.0);
    let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
    let sp: Vec<u32> = match &a.mask {
        TrainMask::SharedPrefix(p) => p.iter().flat_map(|&(x, y)| [x as u32, y as u32]).collect(),
        _ => Vec::new(),
    };
    let max_seqlen = a.max_seqlen.unwrap_or_else(|| a.lens.iter().copied().max().unwrap_or(1).max(1));
    let (window, shared) = match &a.mask {
        TrainMask::Causal(w) => (*w, false),
        TrainMask::SharedPrefix(_) => (None, true),
        TrainMask::Bidirectional => (None, false),
    };
    let causal = !matches!(a.mask, TrainMask::Bidirectional);

    if !a.backward {
        // Rows checked: every `step`-th row of each sequence and its last row.
        let rows: Vec<usize> = a
            .lens
            .iter()
            .enumerate()
            .flat_map(|(b, &len)| {
                let s0 = cu[b] as usize;
                (0..len).filter(move |&j| j % a.step == 0 || j + 1 == len).map(move |j| s0 + j)
            })
            .collect();
        let (o64, o32, l64, l32) = cpu::attention_train_fwd_host(&qf, &kf, &vf, packed, &rows, scale);
        let expect = vec![
            Expected::CloseRms { name: "out", reference: o64, cpu: o32 },
            Expected::CloseF32 { name: "lse", reference: l64, cpu: l32 },
        ];
        let out_idx: Vec<usize> = rows.iter().flat_map(|&i| (0..qw).map(move |c| i * qw + c)).collect();
        let lse_idx: Vec<usize> = (0..h).flat_map(|head| rows.iter().map(move |&i| head * t + i)).collect();
        let (nq, nk) = (q.len(), k.len());
        return Case {
            expect,
            device: Box::new(move |dev| {
                let dq = upload(dev, &q, off, POISON_BF16)?;
                let dk = upload(dev, &k, off, POISON_BF16)?;
                let dv = upload(dev, &v, off, POISON_BF16)?;
                let dcu = dev.htod(&cu)?;
                let dsp = dev.htod(&sp)?;
                let mut dout = poisoned(dev, nq, off, POISON_BF16)?;
                let mut dlse = poisoned(dev, h * t, off, f32::from_bits(POISON_U32))?;
                let (cuv, spv) = (dcu.as_view(), dsp.as_view());
                let mask = train_mask(causal, window, shared, &spv);
                let batch = cuda::VarlenAttn { cu_seqlens: &cuv, max_seqlen, n_heads: h, n_kv_heads: hkv, head_dim: d, scale, mask };
                dev.attention_fwd_kernel(kernel, &dq.slice(off..off + nq), &dk.slice(off..off + nk), &dv.slice(off..off + nk), &batch, &mut dout.slice_mut(off..off + nq), &mut dlse.slice_mut(off..off + h * t))?;
                let o = dev.dtoh(&dout)?;
                let l = f32_bits(&dev.dtoh(&dlse)?);
                Ok(vec![
                    Output::Bf16 { all: select_guarded(&o, off, nq, &out_idx), lo: off, n: out_idx.len() },
                    Output::F32 { all: select_guarded(&l, off, h * t, &lse_idx), lo: off, n: lse_idx.len() },
                ])
            }),
        };
    }

    // Backward: out and lse are the f64 forward's, rounded to bf16 / f32 (independent of the
    // forward kernel); dout random.
    let dout = rng.bf16s(t * qw, 0.01, 2.0);
    let doutf = widen(&dout);
    let all_rows: Vec<usize> = (0..t).collect();
    let (o64, _, l64, _) = cpu::attention_train_fwd_host(&qf, &kf, &vf, packed, &all_rows, scale);
    let out_bits: Vec<u16> = o64.iter().map(|&x| bf16::from_f64(x).to_bits()).collect();
    let lse: Vec<f32> = l64.iter().map(|&x| x as f32).collect();
    let (mut rq, mut rk, mut rv) = (vec![0f64; t * qw], vec![0f64; t * kw], vec![0f64; t * kw]);
    let f64s = |x: &[f32]| -> Vec<f64> { x.iter().map(|&y| y as f64).collect() };
    for (b, &len) in a.lens.iter().enumerate() {
        let s0 = cu[b] as usize;
        let (gq, gk, gv) = cpu::attention_backward(
            &f64s(&qf[s0 * qw..(s0 + len) * qw]),
            &f64s(&kf[s0 * kw..(s0 + len) * kw]),
            &f64s(&vf[s0 * kw..(s0 + len) * kw]),
            &f64s(&doutf[s0 * qw..(s0 + len) * qw]),
            len,
            len,
            h,
            hkv,
            d,
            0,
            masks[b],
        );
        rq[s0 * qw..(s0 + len) * qw].copy_from_slice(&gq);
        rk[s0 * kw..(s0 + len) * kw].copy_from_slice(&gk);
        rv[s0 * kw..(s0 + len) * kw].copy_from_slice(&gv);
    }
    let (eq, ek, ev) = cpu::attention_train_bwd_emulated(&qf, &kf, &vf, &widen(&out_bits), &doutf, &lse, packed, scale);
    let expect = vec![
        Expected::CloseRms { name: "dq", reference: rq, cpu: eq },
        Expected::CloseRms { name: "dk", reference: rk, cpu: ek },
        Expected::CloseRms { name: "dv", reference: rv, cpu: ev },
    ];
    let (nq, nk) = (q.len(), k.len());
    Case {
        expect,
        device: Box::new(move |dev| {
            let dq_in = upload(dev, &q, off, POISON_BF16)?;
            let dk_in = upload(dev, &k, off, POISON_BF16)?;
            let dv_in = upload(dev, &v, off, POISON_BF16)?;
            let dout_in = upload(dev, &out_bits, off, POISON_BF16)?;
            let ddo_in = upload(dev, &dout, off, POISON_BF16)?;
            let dlse = upload(dev, &lse, off, f32::from_bits(POISON_U32))?;
            let dcu = dev.htod(&cu)?;
            let dsp = dev.htod(&sp)?;
            let mut gq = poisoned(dev, nq, off, POISON_BF16)?;
            let mut gk = poisoned(dev, nk, off, POISON_BF16)?;
            let mut gv = poisoned(dev, nk, off, POISON_BF16)?;
            let (cuv, spv) = (dcu.as_view(), dsp.as_view());
            let mask = train_mask(causal, window, shared, &spv);
            let batch = cuda::VarlenAttn { cu_seqlens: &cuv, max_seqlen, n_heads: h, n_kv_heads: hkv, head_dim: d, scale, mask };
            dev.attention_bwd(
                &dq_in.slice(off..off + nq),
                &dk_in.slice(off..off + nk),
                &dv_in.slice(off..off + nk),
                &dout_in.slice(off..off + nq),
                &ddo_in.slice(off..off + nq),
                &dlse.slice(off..off + h * t),
                &batch,
                &mut gq.slice_mut(off..off + nq),
                &mut gk.slice_mut(off..off + nk),
                &mut gv.slice_mut(off..off + nk),
            )?;
            Ok(vec![download_bf16(dev, &gq, off, nq)?, download_bf16(dev, &gk, off, nk)?, download_bf16(dev, &gv, off, nk)?])
        }),
    }
}

fn train_mask<'a>(causal: bool, window: Option<usize>, shared: bool, sp: &'a CudaView<'a, u32>) -> cuda::AttnTrainMask<'a> {
    if shared {
        cuda::AttnTrainMask::SharedPrefix { pairs: sp }
    } else if causal {
        cuda::AttnTrainMask::Causal { window }
    } else {
        cuda::AttnTrainMask::Bidirectional
    }
}
