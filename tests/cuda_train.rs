//! LoRA DPO on the GPU (`train::cuda`, bf16) against the CPU trainer (f32, itself checked against
//! transformers + PEFT autograd in tests/llava_parity.rs). Built only with `--features cuda`;
//! without a device each test prints `skipped: no CUDA device` and passes
//! (with `STIC_REQUIRE_CUDA=1` it fails: `common::cuda`).
//!
//! LoRA dropout (p 0.1) is on in the step tests and in one CLI run: the GPU regenerates the CPU's
//! masks, so both drop the same elements.
//!
//! The model: the tiny LLaVA-NeXT fixture's config with a decoder of head dim 64 (the training
//! attention kernels take head dims 64 and 128; the fixture's is 8), random weights from one seed
//! on both sides. Tolerances (docs/TOLERANCES.md, "DPO step on CUDA"):
//! - reference and policy log-prob sums: |gpu - cpu| <= 1e-2 x sum |logp| (bf16 hidden states move
//!   each logit by ~1e-2 of its rms, a few 1e-3 of a token's |logp| ~ ln V);
//! - the loss: 2e-2 x (1 + |loss|);
//! - every adapter gradient tensor: ||gpu - cpu|| <= 5e-2 ||cpu|| (the whole-model bf16 rule of
//!   tests/cuda_model.rs, on the backward's tensors);
//! - SFT: the loss 2e-2 x (1 + |loss|) and the gradients as DPO's;
//! - the CLI runs (2 AdamW steps): the same number of log lines, each step's loss as above.
//!   Every LoRA, SFT and projector configuration runs as a gradient run: lr 0 (both steps at the
//!   same weights, no drift between the devices), clipping off (it would normalise the scale
//!   away), a random adapter (`--init-adapter`, so that dA is not 0), and the gradients compared
//!   through AdamW's first moments in `checkpoint/optimizer.safetensors` (m = 0.09 g1 + 0.1 g2),
//!   every tensor within the step tests' 5e-2 relative L2. One updating DPO run (lr 1e-2) checks
//!   that the update is applied: per tensor, the norm of final - init within 20% of the CPU's and
//!   its cosine with the CPU's >= 0.5 (AdamW's first steps are ~±lr per element whatever |g| is,
//!   so elements whose gradient is within the bf16 error of 0 move either way; an element-wise
//!   rule cannot allow for them, and cannot see a gradient wrong by a positive factor).
//! - full-parameter training (`--train`): every trained tensor's gradient as above; with the
//!   vision tower (`--train ...,vision`) a tiny LLaVA-1.5 whose tower has head dim 64 too, the
//!   k_proj biases (exact gradient 0) bounded in norm instead (`without_zero_grads`).
#![cfg(feature = "cuda")]

mod common;


use common::*;
use stic::adapter::{init_lora, save_adapter, LoraSpec};
use stic::backend::cuda::Cuda;
use stic::generate::Pipeline;
use stic::rng::Rng;
use stic::image::load_image;
use stic::model::decoder::StepOpts;
use stic::train::cuda::CudaLearner;
use stic::model::grads::DecoderGrads;
use stic::train::full::TrainParts;
use stic::train::{dpo_pair_grads_packed, dpo_pair_grads_packed_full, reference_logps, sft_grads, sft_grads_full, Pair};
use stic::train::run_loop::{Learner, TrainArgs};


/// The LoRA dropout seed of the step tests (their adapters drop 10% of the LoRA path's input).
const DROPOUT_SEED: Option<u64> = Some(0xD15E_A5ED);

fn spec() -> LoraSpec {
    LoraSpec { r: 4, alpha: 8.0, dropout: 0.1, targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].iter().map(|s| s.to_string()).collect() }
}

/// STIC's DPO settings with a small adapter and a large learning rate (tiny model, 2 steps).
fn args() -> TrainArgs {
    TrainArgs { lora: spec(), projector_lr: None, lr: 1e-2, grad_accum: 1, warmup_ratio: 0.0, save_every: None, ..stic::run::stic_dpo_defaults(0, true) }
}

fn l2(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}

/// The CPU model of `dir` with random weights from `seed` and adapters whose A and B are both
/// random (B = 0 would make every dA zero), also saved to `dir`/adapter for the GPU side.
fn cpu_with_random_adapter(dir: &std::path::Path, seed: u64, lora_seed: u64) -> (Pipeline, std::path::PathBuf) {
    let mut cpu = Pipeline::load_with(dir, Some(seed), None).unwrap();
    init_lora(&mut cpu.model, &spec(), lora_seed).unwrap();
    let mut rng = Rng::new(lora_seed ^ 0x5EED);
    for (_, _, lin) in cpu.model.decoder.projections_mut() {
        let b = &mut lin.lora.as_mut().unwrap().b;
        b.data_mut().iter_mut().for_each(|v| *v = ((rng.uniform() * 2.0 - 1.0) * 0.05) as f32);
    }
    let adir = dir.join("adapter");
    save_adapter(&mut cpu.model, &adir, &spec(), false).unwrap();
    (cpu, adir)
}

#[test]
fn dpo_step_cuda_matches_cpu() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = tiny64("cuda-dpo-step");
    let seed = Some(7);
    let (mut cpu, adir) = cpu_with_random_adapter(&dir, 7, 1);
    let pair = Pair {
        prompt: cpu.format_prompt("Describe the image.", 1, false),
        images: vec![load_image(&fixtures().join("images/wide.jpg")).unwrap()],
        chosen: "A red square and a blue circle.".into(),
        rejected: "A dog asleep on a sofa.".into(),
    };
    let (beta, alpha) = (0.1, 1.0 / 1024.0);
    // The CPU reference: the base model's sums (adapters taken off), then the packed pair's loss
    // and gradients.
    let ref_cpu = reference_logps(&mut cpu, &pair).unwrap();
    // The projector trains too (STIC's stage 1 does).
    let opts = StepOpts { projector: true, dropout_seed: DROPOUT_SEED, ..Default::default() };
    let (o_cpu, g_cpu, _) = dpo_pair_grads_packed(&cpu, &pair, ref_cpu, beta, alpha, opts).unwrap();

    let gpu = Pipeline::load_on(&be, &dir, seed, None).unwrap();
    let mut learner = CudaLearner::new(gpu, &TrainArgs { projector_lr: Some(1e-3), ..args() }).unwrap();
    learner.load_adapter(&adir).unwrap();
    let ref_gpu = learner.reference_logps(&pair).unwrap();
    for (what, g, c) in [("reference chosen", ref_gpu.0, ref_cpu.0), ("reference rejected", ref_gpu.1, ref_cpu.1)] {
        assert!((g - c).abs() <= 1e-2 * c.abs(), "{what}: gpu {g} vs cpu {c}");
    }
    // Both sides against the CPU's reference sums, so the loss compares the policies only.
    let (o_gpu, tokens) = learner.dpo_pair(&pair, ref_cpu, beta, alpha, 1.0, DROPOUT_SEED).unwrap();
    assert!(tokens > 0);
    assert!((o_gpu.loss - o_cpu.loss).abs() <= 2e-2 * (1.0 + o_cpu.loss.abs()), "loss: gpu {} vs cpu {}", o_gpu.loss, o_cpu.loss);
    // Rewards are beta (policy - reference): the policy sums' rule, scaled by beta.
    let pc_cpu = o_cpu.chosen_reward / beta + ref_cpu.0;
    let pc_gpu = o_gpu.chosen_reward / beta + ref_cpu.0;
    assert!((pc_gpu - pc_cpu).abs() <= 1e-2 * pc_cpu.abs(), "policy chosen sum: gpu {pc_gpu} vs cpu {pc_cpu}");
    let w1 = compare_grads("lora", &named(learner.grads().unwrap()), &named(g_cpu.lora.clone()));
    let worst = w1.max(compare_grads("projector", &learner.projector_grads().unwrap(), &g_cpu.projector));
    println!("dpo step: loss gpu {:.6} cpu {:.6}; worst gradient rel-L2 error {worst:.3e}", o_gpu.loss, o_cpu.loss);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Adapter gradients as named tensors (`{layer}.{proj}.A`, `.B`).
fn named(g: Vec<stic::model::decoder::LoraGrad>) -> Vec<(String, Vec<f32>)> {
    g.into_iter().flat_map(|(l, n, a, b)| [(format!("{l}.{n}.A"), a), (format!("{l}.{n}.B"), b)]).collect()
}

/// The relative L2 error of every gradient tensor, asserted <= 5e-2; the worst.
fn compare_grads(what: &str, gpu: &[(String, Vec<f32>)], cpu: &[(String, Vec<f32>)]) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: gradient tensors");
    // The learners list their tensors in different orders (the GPU by projection group): by name.
    fn sorted(v: &[(String, Vec<f32>)]) -> Vec<&(String, Vec<f32>)> {
        let mut v: Vec<_> = v.iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
    let mut worst = 0.0f64;
    for ((ng, g), (nc, c)) in sorted(gpu).into_iter().zip(sorted(cpu)) {
        assert_eq!(ng, nc);
        assert_eq!(g.len(), c.len(), "{what} {ng}: gpu {} elements, cpu {}", g.len(), c.len());
        assert!(!c.is_empty(), "{what} {ng}: empty gradient");
        let diff: Vec<f32> = g.iter().zip(c.iter()).map(|(a, b)| a - b).collect();
        let rel = l2(&diff) / l2(c).max(f64::MIN_POSITIVE);
        worst = worst.max(rel);
        assert!(rel <= 5e-2, "{what} {ng}: ||gpu - cpu|| / ||cpu|| = {rel:.3e} (||cpu|| = {:.3e})", l2(c));
    }
    worst
}

#[test]
fn sft_step_cuda_matches_cpu() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = tiny64("cuda-sft-step");
    let seed = Some(5);
    let (cpu, adir) = cpu_with_random_adapter(&dir, 5, 2);
    let turns = vec![
        ("<image>\nWhat is shown in this image?".to_string(), "A red square and a blue circle.".to_string()),
        ("What colour is the circle?".to_string(), "It is blue.".to_string()),
    ];
    let images = vec![load_image(&fixtures().join("images/wide.jpg")).unwrap()];
    let (loss_cpu, g_cpu, _) = sft_grads(&cpu, &turns, &images, StepOpts { projector: true, dropout_seed: DROPOUT_SEED, ..Default::default() }).unwrap();

    let gpu = Pipeline::load_on(&be, &dir, seed, None).unwrap();
    let mut learner = CudaLearner::new(gpu, &TrainArgs { projector_lr: Some(1e-3), ..args() }).unwrap();
    learner.load_adapter(&adir).unwrap();
    let (loss_gpu, _) = learner.sft_example(&turns, &images, 1.0, DROPOUT_SEED).unwrap();
    assert!((loss_gpu - loss_cpu).abs() <= 2e-2 * (1.0 + loss_cpu.abs()), "loss: gpu {loss_gpu} vs cpu {loss_cpu}");
    let w1 = compare_grads("lora", &named(learner.grads().unwrap()), &named(g_cpu.lora.clone()));
    let w2 = compare_grads("projector", &learner.projector_grads().unwrap(), &g_cpu.projector);
    println!("sft step: loss gpu {loss_gpu:.6} cpu {loss_cpu:.6}; worst gradient rel-L2 error {:.3e}", w1.max(w2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_sft_cuda_matches_cpu() {
    if cuda(Cuda::new).is_none() {
        return;
    }
    let dir = tiny64("cuda-train-sft");
    let data = fixtures().join("sft/llava.json");
    // Gradient runs (lr 0, no clipping): a random adapter and the projector, then the projector
    // alone (LLaVA's alignment stage).
    let (_, adir) = cpu_with_random_adapter(&dir, 7, 4);
    let extra = ["--init-adapter", adir.to_str().unwrap(), "--projector-lr", "0", "--max-grad-norm", "1e30"];
    let (cpu, gpu) = train_both("train-sft", &dir, &data, "0", &extra, "sft");
    compare_outputs(&cpu, &gpu, None, "train-sft, lr 0 (gradients)");
    let (cpu, gpu) = train_both("train-sft", &dir, &data, "0", &["--lora-r", "0", "--projector-lr", "0", "--max-grad-norm", "1e30"], "sft-projector");
    compare_outputs(&cpu, &gpu, None, "train-sft, projector only, lr 0 (gradients)");
    let _ = std::fs::remove_dir_all(&dir);
}


#[test]
fn train_dpo_cuda_matches_cpu() {
    if cuda(Cuda::new).is_none() {
        return;
    }
    let dir = tiny64("cuda-train-dpo");
    let data = fixtures().join("prefs/prefs.jsonl");
    // The gradient run: a random adapter (A and B random: dA != 0) on the same random weights
    // (seed 7) as the CLI's, the projector, LoRA dropout (the same masks on both devices), lr 0,
    // no clipping.
    let (_, adir) = cpu_with_random_adapter(&dir, 7, 4);
    let grad = ["--init-adapter", adir.to_str().unwrap(), "--sft-weight", "0.0009765625", "--max-grad-norm", "1e30", "--lora-dropout", "0.1", "--projector-lr", "0"];
    let (cpu, gpu) = train_both("train-dpo", &dir, &data, "0", &grad, "dpo-gradients");
    compare_outputs(&cpu, &gpu, None, "train-dpo, lr 0 (gradients)");
    // An updating run from the same adapter: the update is applied (its size and direction).
    let upd = ["--init-adapter", adir.to_str().unwrap(), "--sft-weight", "0.0009765625", "--lora-dropout", "0.1"];
    let (cpu, gpu) = train_both("train-dpo", &dir, &data, "1e-2", &upd, "dpo-update");
    compare_outputs(&cpu, &gpu, Some(&adir), "train-dpo, lr 1e-2 (update)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cmd` (train-dpo or train-sft) for 2 steps at learning rate `lr` on the CPU and on the GPU:
/// the two output folders.
fn train_both(cmd: &str, dir: &std::path::Path, data: &std::path::Path, lr: &str, extra: &[&str], tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let run = |device: &str| -> std::path::PathBuf {
        let out = dir.join(format!("out-{tag}-{device}"));
        let mut args = vec![
            cmd, "--model", dir.to_str().unwrap(), "--random-weights", "--weights-seed", "7", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(),
            "--lr", lr, "--max-steps", "2", "--warmup-ratio", "0", "--seed", "3", "--quiet", "--device", device,
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = stic(&args);
        assert!(ok, "{cmd} --device {device}: {err}");
        out
    };
    (run("cpu"), run("cuda"))
}

/// Two runs' step losses, and as the module docs say: without `init` (a gradient run at lr 0)
/// AdamW's first moments; with the adapter `init` both runs started from (an updating run), each
/// tensor's update final - init: its norm within 20% of the CPU's and its cosine with the CPU's
/// at least 0.5. (AdamW's first steps are about lr x sign(g) per element, so elements whose
/// gradient is within bf16 noise of zero move either way on either device: the emulated runs
/// put 6-8% of the elements there, which an element-wise rule cannot allow for; the gradients
/// themselves are compared by the lr-0 runs.)
fn compare_outputs(cpu: &std::path::Path, gpu: &std::path::Path, init: Option<&std::path::Path>, what: &str) {
    let log = |d: &std::path::Path| -> Vec<f64> {
        std::fs::read_to_string(d.join("train_log.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
    };
    let (lc, lg) = (log(cpu), log(gpu));
    assert_eq!(lc.len(), 2, "{what}: steps logged by the CPU run");
    assert_eq!(lg.len(), lc.len(), "{what}: steps logged by the GPU run");
    for (s, (c, g)) in lc.iter().zip(&lg).enumerate() {
        assert!((g - c).abs() <= 2e-2 * (1.0 + c.abs()), "{what}: step {} loss: gpu {g} vs cpu {c}", s + 1);
    }
    let Some(init) = init else {
        compare_moments(cpu, gpu, what);
        return;
    };
    let read = |d: &std::path::Path| stic::weights::WeightStore::from_files(d, &[d.join("adapter_model.safetensors")]).unwrap();
    let (wc, wg, w0) = (read(cpu), read(gpu), read(init));
    let names: Vec<String> = w0.names().map(str::to_string).collect();
    assert!(!names.is_empty());
    let mut gnames: Vec<String> = wg.names().map(str::to_string).collect();
    let mut cnames: Vec<String> = wc.names().map(str::to_string).collect();
    gnames.sort();
    cnames.sort();
    assert_eq!(gnames, cnames, "{what}: the saved tensors");
    for name in names {
        let shape = w0.shape_of(&name).unwrap();
        assert_eq!(wg.shape_of(&name).unwrap(), shape, "{what}: {name}");
        let (c, g, i0) = (wc.get(&name, &shape).unwrap(), wg.get(&name, &shape).unwrap(), w0.get(&name, &shape).unwrap());
        assert_eq!(c.data().len(), g.data().len(), "{what}: {name}");
        let dc: Vec<f32> = c.data().iter().zip(i0.data()).map(|(a, b)| a - b).collect();
        let dg: Vec<f32> = g.data().iter().zip(i0.data()).map(|(a, b)| a - b).collect();
        let (nc, ng) = (l2(&dc), l2(&dg));
        assert!(nc > 0.0, "{what}: {name}: the CPU run did not move it");
        let ratio = ng / nc;
        let cos = dc.iter().zip(&dg).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (nc * ng).max(f64::MIN_POSITIVE);
        assert!((0.8..=1.25).contains(&ratio) && cos >= 0.5, "{what}: {name}: update norm gpu/cpu {ratio:.3}, cosine {cos:.3}");
    }
}

/// (cpu, gpu) without the tensors whose exact gradient is 0: the vision attention's k_proj bias
/// (softmax does not see a constant added to every key), where both sides hold rounding noise;
/// the GPU's noise there is asserted below 5e-2 x the norm of the CPU's q_proj bias gradient (or
/// moment) of the same layer.
type Named = Vec<(String, Vec<f32>)>;
fn without_zero_grads(cpu: Named, gpu: Named) -> (Named, Named) {
    let zero = |n: &String| n.contains("k_proj.bias");
    let (cpu, cpu_kb): (Named, Named) = cpu.into_iter().partition(|(n, _)| !zero(n));
    let (gpu, gpu_kb): (Named, Named) = gpu.into_iter().partition(|(n, _)| !zero(n));
    assert_eq!(cpu_kb.len(), gpu_kb.len(), "k_proj bias tensors");
    for (n, g) in &gpu_kb {
        let q = &cpu.iter().find(|(m, _)| *m == n.replace("k_proj", "q_proj")).unwrap_or_else(|| panic!("no q_proj bias beside {n}")).1;
        let (ng, nq) = (l2(g), l2(q));
        println!("{n} (exact gradient 0): ||gpu|| {ng:.3e}, ||q_proj.bias|| {nq:.3e}");
        assert!(ng <= 5e-2 * nq, "{n}: ||gpu|| {ng:.3e} > 5e-2 x the q_proj bias's {nq:.3e}");
    }
    (cpu, gpu)
}

/// The gradients of two runs at lr 0: AdamW's first moments m (f32 `{param}.m`, the same names on
/// both sides; `.v` and `.step` are not compared), each within 5e-2 relative L2.
fn compare_moments(cpu: &std::path::Path, gpu: &std::path::Path, what: &str) {
    let moments = |d: &std::path::Path| -> Vec<(String, Vec<f32>)> {
        let mut m: Vec<(String, Vec<f32>)> = read_tensors(d.join("checkpoint/optimizer.safetensors").to_str().unwrap()).into_iter().filter(|(k, _)| k.ends_with(".m")).map(|(k, (_, v))| (k, v)).collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        m
    };
    let (mc, mg) = without_zero_grads(moments(cpu), moments(gpu));
    assert!(!mc.is_empty(), "{what}: no first moments in the CPU's optimizer.safetensors");
    let worst = compare_grads(&format!("{what}: AdamW first moment"), &mg, &mc);
    println!("{what}: worst first-moment rel-L2 error {worst:.3e}");
}

/// Issue #15 (b), (c): once the first DPO steps have run (the warm-up allocates activations,
/// gradient and optimizer buffers, scratch), further training steps (forward, backward, AdamW)
/// make no device allocation (every buffer comes back from the buffer cache or the scratch
/// cache), and their host-device copies all go through the pinned staging ring.
#[test]
fn training_steps_allocate_nothing_once_warm() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = tiny64("cuda-train-allocs");
    let (cpu, adir) = cpu_with_random_adapter(&dir, 7, 1);
    let pair = Pair {
        prompt: cpu.format_prompt("Describe the image.", 1, false),
        images: vec![load_image(&fixtures().join("images/wide.jpg")).unwrap()],
        chosen: "A red square and a blue circle.".into(),
        rejected: "A dog asleep on a sofa.".into(),
    };
    drop(cpu);
    let gpu = Pipeline::load_on(&be, &dir, Some(7), None).unwrap();
    let mut learner = CudaLearner::new(gpu, &TrainArgs { projector_lr: Some(1e-3), ..args() }).unwrap();
    learner.load_adapter(&adir).unwrap();
    let reference = learner.reference_logps(&pair).unwrap();
    let dev = be.device().clone();
    let step = |learner: &mut CudaLearner| {
        learner.dpo_pair(&pair, reference, 0.1, 1.0 / 1024.0, 1.0, DROPOUT_SEED).unwrap();
        learner.grad_norm().unwrap();
        learner.step(1.0, 1e-3, 1e-3).unwrap();
    };
    let (a0, s0) = (dev.alloc_count(), dev.scratch_alloc_count());
    step(&mut learner);
    step(&mut learner);
    let (a_warm, s_warm) = (dev.alloc_count() - a0, dev.scratch_alloc_count() - s0);
    let (a1, s1, r1) = (dev.alloc_count(), dev.scratch_alloc_count(), dev.alloc_reuse_count());
    let (c1, p1) = dev.copy_counts();
    for _ in 0..3 {
        step(&mut learner);
    }
    let (a, s, reused) = (dev.alloc_count() - a1, dev.scratch_alloc_count() - s1, dev.alloc_reuse_count() - r1);
    let (staged, pageable) = (dev.copy_counts().0 - c1, dev.copy_counts().1 - p1);
    println!("DPO steps: warm-up (2 steps) {a_warm} device allocations ({s_warm} scratch); next 3 steps {a} ({s} scratch), {reused} buffers reused, {staged} host-device copies through the pinned ring, {pageable} pageable");
    assert!(staged > 0, "the steps' host-device copies go through the pinned ring");
    assert_eq!(pageable, 0, "no pageable copy in a training step (issue #15 (c))");
    assert!(a_warm > 0, "the warm-up allocates (the counter works)");
    assert_eq!((a, s), (0, 0), "no device or scratch allocation in a training step once warm");
    assert!(reused > 0, "the steps reuse cached buffers");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- Full-parameter training (`--train decoder,projector`, issue #17) on the GPU learner ----

/// `--train decoder,projector` (LoRA off; the projector at the learning rate).
fn full_args() -> TrainArgs {
    TrainArgs { train: Some(TrainParts { decoder: true, projector: true, vision: false }), lora: LoraSpec { r: 0, ..spec() }, projector_lr: None, ..args() }
}

/// Every decoder weight's gradient and the projector's, GPU (bf16 model, f32 gradients) against
/// the CPU's `DecoderGrads` (f32), each tensor within 5e-2 relative L2 (docs/TOLERANCES.md); the
/// worst error.
fn compare_full(what: &str, learner: &CudaLearner, dec: &DecoderGrads, proj: &[(String, Vec<f32>)]) -> f64 {
    let cpu: Vec<(String, Vec<f32>)> = dec.named().into_iter().map(|(n, g)| (n, g.clone())).collect();
    let gpu = learner.decoder_grads().unwrap();
    // The three worst tensors, for docs/TOLERANCES.md.
    let mut errs: Vec<(f64, &str)> = gpu
        .iter()
        .zip(&cpu)
        .map(|((n, g), (_, c))| (l2(&g.iter().zip(c).map(|(a, b)| a - b).collect::<Vec<f32>>()) / l2(c).max(f64::MIN_POSITIVE), n.as_str()))
        .collect();
    errs.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("{what}: worst decoder tensors {:?}", &errs[..3.min(errs.len())]);
    let w1 = compare_grads(&format!("{what} decoder"), &gpu, &cpu);
    w1.max(compare_grads(&format!("{what} projector"), &learner.projector_grads().unwrap(), proj))
}

#[test]
fn full_step_gradients_cuda_match_cpu() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = tiny64("cuda-full-step");
    let cpu = Pipeline::load_with(&dir, Some(11), None).unwrap();
    let images = vec![load_image(&fixtures().join("images/wide.jpg")).unwrap()];
    let opts = StepOpts { projector: true, ..Default::default() };
    // SFT: one conversation.
    let turns = vec![
        ("<image>\nWhat is shown in this image?".to_string(), "A red square and a blue circle.".to_string()),
        ("What colour is the circle?".to_string(), "It is blue.".to_string()),
    ];
    let mut g = DecoderGrads::zeros(&cpu.model.cfg.text);
    let (loss_cpu, gc, _) = sft_grads_full(&cpu, &turns, &images, opts, Some((&mut g, 1.0))).unwrap();
    let mut learner = CudaLearner::new(Pipeline::load_on(&be, &dir, Some(11), None).unwrap(), &full_args()).unwrap();
    let (loss_gpu, _) = learner.sft_example(&turns, &images, 1.0, None).unwrap();
    assert!((loss_gpu - loss_cpu).abs() <= 2e-2 * (1.0 + loss_cpu.abs()), "sft loss: gpu {loss_gpu} vs cpu {loss_cpu}");
    let sft = compare_full("sft", &learner, &g, &gc.projector);
    // DPO: one pair, packed under the shared-prefix mask (both sides).
    let mut cpu = cpu;
    let pair = Pair { prompt: cpu.format_prompt("Describe the image.", 1, false), images, chosen: "A red square and a blue circle.".into(), rejected: "A dog asleep on a sofa.".into() };
    let reference = reference_logps(&mut cpu, &pair).unwrap();
    let mut g = DecoderGrads::zeros(&cpu.model.cfg.text);
    let (o_cpu, gc, _) = dpo_pair_grads_packed_full(&cpu, &pair, reference, 0.1, 1.0 / 1024.0, opts, Some((&mut g, 1.0))).unwrap();
    let mut learner = CudaLearner::new(Pipeline::load_on(&be, &dir, Some(11), None).unwrap(), &full_args()).unwrap();
    let (o_gpu, _) = learner.dpo_pair(&pair, reference, 0.1, 1.0 / 1024.0, 1.0, None).unwrap();
    assert!((o_gpu.loss - o_cpu.loss).abs() <= 2e-2 * (1.0 + o_cpu.loss.abs()), "dpo loss: gpu {} vs cpu {}", o_gpu.loss, o_cpu.loss);
    let dpo = compare_full("dpo", &learner, &g, &gc.projector);
    println!("full step: sft loss gpu {loss_gpu:.6} cpu {loss_cpu:.6}, worst rel-L2 {sft:.3e}; dpo loss gpu {:.6} cpu {:.6}, worst rel-L2 {dpo:.3e}", o_gpu.loss, o_cpu.loss);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tied lm_head (`tie_word_embeddings`): its gradient adds into embed_tokens' on the GPU as on
/// the CPU (no lm_head buffer on either side).
#[test]
fn full_step_gradients_with_tied_embeddings_cuda_match_cpu() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = tiny64("cuda-full-tied");
    edit_config(&dir, |c| {
        c["tie_word_embeddings"] = true.into();
        c["text_config"]["tie_word_embeddings"] = true.into();
    });
    let cpu = Pipeline::load_with(&dir, Some(12), None).unwrap();
    assert!(cpu.model.cfg.text.tie_word_embeddings);
    let images = vec![load_image(&fixtures().join("images/wide.jpg")).unwrap()];
    let turns = vec![("<image>\nWhat is shown in this image?".to_string(), "A red square and a blue circle.".to_string())];
    let mut g = DecoderGrads::zeros(&cpu.model.cfg.text);
    assert!(g.lm_head.is_none());
    let (_, gc, _) = sft_grads_full(&cpu, &turns, &images, StepOpts { projector: true, ..Default::default() }, Some((&mut g, 1.0))).unwrap();
    let mut learner = CudaLearner::new(Pipeline::load_on(&be, &dir, Some(12), None).unwrap(), &full_args()).unwrap();
    learner.sft_example(&turns, &images, 1.0, None).unwrap();
    let worst = compare_full("tied sft", &learner, &g, &gc.projector);
    println!("full step, tied lm_head: worst rel-L2 {worst:.3e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tiny LLaVA-1.5 folder (head dim 64) with real f32 weights on disk (`--train` writes model
/// directories from the checkpoint's safetensors, so it refuses `--random-weights`): the language
/// model and projector drawn from `seed`, the fixture's vision tower.
fn tiny64_with_weights(tag: &str, seed: u64) -> std::path::PathBuf {
    with_weights(tiny64_of("llava15_tiny", tag), seed, false)
}

/// [`tiny64_with_weights`] whose vision tower also has head dim 64 ([`tiny64_vision_of`]), its
/// trained tensors (up to the feature layer) drawn from `seed` too.
fn tiny64_vision_with_weights(tag: &str, seed: u64) -> std::path::PathBuf {
    with_weights(tiny64_vision_of("llava15_tiny", tag), seed, true)
}

/// The tiny fixture `rel` with head dim 64 in the decoder and the vision tower (hidden 128, 2
/// heads, MLP 256: the attention backward takes head dims 64 and 128), for `--train vision` on
/// the GPU.
fn tiny64_vision_of(rel: &str, tag: &str) -> std::path::PathBuf {
    let dir = tiny64_of(rel, tag);
    edit_config(&dir, |c| {
        let v = &mut c["vision_config"];
        v["hidden_size"] = 128.into();
        v["num_attention_heads"] = 2.into();
        v["intermediate_size"] = 256.into();
    });
    dir
}

/// `dir`'s model.safetensors rewritten with the language model and projector of the random
/// model drawn from `seed` (and its vision tower's trained tensors when `vision`).
fn with_weights(dir: std::path::PathBuf, seed: u64, vision: bool) -> std::path::PathBuf {
    let mut cpu = Pipeline::load_with(&dir, Some(seed), None).unwrap();
    let file = dir.join("model.safetensors");
    let ws = stic::weights::WeightStore::open(&dir).unwrap();
    let names = stic::train::full::CheckpointNames::of(&ws).unwrap();
    let mut new: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> = Default::default();
    if vision {
        let tower = stic::model::llava::locate_vision(&ws).unwrap();
        for (n, t) in cpu.model.vision_params_mut().unwrap() {
            new.insert(format!("{tower}.{n}"), (t.shape().to_vec(), t.data().to_vec()));
        }
    }
    for (n, t) in cpu.model.decoder.params_mut() {
        new.insert(names.decoder(&n), (t.shape().to_vec(), t.data().to_vec()));
    }
    for (n, t) in cpu.model.projector.params_mut() {
        new.insert(names.projector(&n), (t.shape().to_vec(), t.data().to_vec()));
    }
    let all: Vec<(String, Vec<usize>, Vec<f32>)> = ws
        .names()
        .map(|n| match new.remove(n) {
            Some((s, d)) => (n.to_string(), s, d),
            None => {
                let s = ws.shape_of(n).unwrap();
                (n.to_string(), s.clone(), ws.get(n, &s).unwrap().data().to_vec())
            }
        })
        .collect();
    assert!(new.is_empty(), "tensors missing from the fixture: {:?}", new.keys().collect::<Vec<_>>());
    drop(ws);
    let bytes = stic::weights::f32_safetensors(all.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())), &file).unwrap();
    std::fs::write(&file, bytes).unwrap();
    dir
}

/// `cmd` (train-sft or train-dpo) `--train decoder,projector` on `device` from `model`: the
/// output folder.
fn train_full(cmd: &str, model: &std::path::Path, device: &str, tag: &str, extra: &[&str]) -> std::path::PathBuf {
    train_parts(cmd, model, "decoder,projector", device, tag, extra)
}

/// `cmd` with `--train parts`.
fn train_parts(cmd: &str, model: &std::path::Path, parts: &str, device: &str, tag: &str, extra: &[&str]) -> std::path::PathBuf {
    let out = model.join(format!("out-{tag}-{device}"));
    let (sft, images, prefs) = (fixtures().join("sft/llava.json"), fixtures().join("sft"), fixtures().join("prefs/prefs.jsonl"));
    let data: Vec<&str> = if cmd == "train-sft" { vec!["--data", sft.to_str().unwrap(), "--image-folder", images.to_str().unwrap()] } else { vec!["--data", prefs.to_str().unwrap()] };
    let mut args = vec![cmd, "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(data);
    args.extend(["--train", parts, "--lr", "1e-3", "--weight-decay", "0.1", "--warmup-ratio", "0", "--seed", "3", "--quiet", "--device", device]);
    args.extend_from_slice(extra);
    let (ok, _, err) = stic(&args);
    assert!(ok, "{cmd} --train --device {device}: {err}");
    out
}

#[test]
fn train_full_cuda_matches_cpu_and_resumes_bit_identically() {
    if cuda(Cuda::new).is_none() {
        return;
    }
    let model = tiny64_with_weights("cuda-full-cli", 13);
    let steps = ["--max-steps", "2", "--max-grad-norm", "1e30"];
    // DPO (the reference log-probs from the base model on both devices): the step losses and
    // the gradients (AdamW's first moments) as the LoRA runs'.
    let (cpu, gpu) = (train_full("train-dpo", &model, "cpu", "dpo", &steps), train_full("train-dpo", &model, "cuda", "dpo", &steps));
    compare_outputs(&cpu, &gpu, None, "train-dpo --train decoder,projector");
    let (cpu, gpu) = (train_full("train-sft", &model, "cpu", "run", &steps), train_full("train-sft", &model, "cuda", "run", &steps));
    compare_outputs(&cpu, &gpu, None, "train-sft --train decoder,projector");
    // The weights: every trained tensor's update (final - base), over the whole model, within 20%
    // of the CPU's in norm, cosine >= 0.5 (the LoRA update rule: AdamW moves elements whose
    // gradient is within bf16 noise of 0 either way); the untrained tensors bit for bit.
    let read = |d: &std::path::Path| stic::weights::WeightStore::open(d).unwrap();
    let (wb, wc, wg) = (read(&model), read(&cpu), read(&gpu));
    let (mut dc, mut dg) = (Vec::new(), Vec::new());
    for name in wb.names() {
        let s = wb.shape_of(name).unwrap();
        let (b, c, g) = (wb.get(name, &s).unwrap(), wc.get(name, &s).unwrap(), wg.get(name, &s).unwrap());
        if b.data() == c.data() {
            assert!(g.data() == b.data(), "{name}: untrained on the CPU, moved on the GPU");
            continue;
        }
        dc.extend(c.data().iter().zip(b.data()).map(|(a, b)| a - b));
        dg.extend(g.data().iter().zip(b.data()).map(|(a, b)| a - b));
    }
    let (nc, ng) = (l2(&dc), l2(&dg));
    let cos = dc.iter().zip(&dg).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (nc * ng).max(f64::MIN_POSITIVE);
    println!("full CLI run: update norm gpu/cpu {:.3}, cosine {cos:.3}", ng / nc);
    assert!(nc > 0.0 && (0.8..=1.25).contains(&(ng / nc)) && cos >= 0.5, "update norm gpu/cpu {:.3}, cosine {cos:.3}", ng / nc);
    // Resume on the GPU: stopped after step 1, resumed: the same files, bit for bit.
    let common = ["--max-steps", "2", "--save-every", "1"];
    let a = train_full("train-sft", &model, "cuda", "resume-a", &common);
    let b = train_full("train-sft", &model, "cuda", "resume-b", &[&common[..], &["--stop-after", "1"]].concat());
    let b2 = train_full("train-sft", &model, "cuda", "resume-b", &[&common[..], &["--resume"]].concat());
    assert_eq!(b, b2);
    for f in ["model.safetensors", "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "train_log.jsonl"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs after resuming on the GPU");
    }
    let _ = std::fs::remove_dir_all(&model);
}

/// `--train decoder,projector,vision`: one SFT example's gradients of every trained tensor (the
/// vision tower's up to the feature layer included) against the CPU learner's, each within 5e-2
/// relative L2 (docs/TOLERANCES.md); LLaVA-1.5 and LLaVA-NeXT (AnyRes tiles, the row map).
#[test]
fn vision_step_gradients_cuda_match_cpu() {
    vision_step_case("llava15_tiny", "cuda-vision-step");
    vision_step_case("llava_next_tiny", "cuda-vision-step-next");
}

fn vision_step_case(rel: &str, tag: &str) {
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = tiny64_vision_of(rel, tag);
    let mut cpu = Pipeline::load_with(&dir, Some(19), None).unwrap();
    cpu.model.train_vision().unwrap();
    let images = vec![load_image(&fixtures().join("images/wide.jpg")).unwrap()];
    let turns = vec![("<image>\nWhat is shown in this image?".to_string(), "A red square and a blue circle.".to_string())];
    let mut g = DecoderGrads::zeros(&cpu.model.cfg.text);
    let (loss_cpu, gc, _) = sft_grads_full(&cpu, &turns, &images, StepOpts { projector: true, ..Default::default() }, Some((&mut g, 1.0))).unwrap();
    let args = TrainArgs { train: Some(TrainParts { decoder: true, projector: true, vision: true }), ..full_args() };
    let mut learner = CudaLearner::new(Pipeline::load_on(&be, &dir, Some(19), None).unwrap(), &args).unwrap();
    let (loss_gpu, _) = learner.sft_example(&turns, &images, 1.0, None).unwrap();
    assert!((loss_gpu - loss_cpu).abs() <= 2e-2 * (1.0 + loss_cpu.abs()), "sft loss: gpu {loss_gpu} vs cpu {loss_cpu}");
    let worst = compare_full("vision sft", &learner, &g, &gc.projector);
    let (cpu_vision, gpu_vision) = without_zero_grads(gc.vision.into_iter().collect(), learner.vision_grads().unwrap());
    let mut errs: Vec<(f64, &str)> = gpu_vision
        .iter()
        .map(|(n, g)| {
            let c = &cpu_vision.iter().find(|(m, _)| m == n).unwrap_or_else(|| panic!("no CPU gradient for {n}")).1;
            (l2(&g.iter().zip(c).map(|(a, b)| a - b).collect::<Vec<f32>>()) / l2(c).max(f64::MIN_POSITIVE), n.as_str())
        })
        .collect();
    errs.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("vision sft: worst vision tensors {:?}", &errs[..3.min(errs.len())]);
    let wv = compare_grads("vision sft tower", &gpu_vision, &cpu_vision);
    println!("{rel} vision step: sft loss gpu {loss_gpu:.6} cpu {loss_cpu:.6}, worst rel-L2 decoder/projector {worst:.3e}, vision {wv:.3e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `train-dpo` and `train-sft --train decoder,projector,vision` on the GPU: the step losses and
/// gradients as the CPU's, the trained weights (the tower's under its checkpoint names) close to the CPU's, and a
/// resumed run bit-identical (emulated device).
#[test]
fn train_vision_cuda_matches_cpu_and_resumes_bit_identically() {
    if cuda(Cuda::new).is_none() {
        return;
    }
    let model = tiny64_vision_with_weights("cuda-vision-cli", 23);
    let parts = "decoder,projector,vision";
    let steps = ["--max-steps", "2", "--max-grad-norm", "1e30"];
    let (cpu, gpu) = (train_parts("train-dpo", &model, parts, "cpu", "vdpo", &steps), train_parts("train-dpo", &model, parts, "cuda", "vdpo", &steps));
    compare_outputs(&cpu, &gpu, None, "train-dpo --train decoder,projector,vision");
    let (cpu, gpu) = (train_parts("train-sft", &model, parts, "cpu", "vrun", &steps), train_parts("train-sft", &model, parts, "cuda", "vrun", &steps));
    compare_outputs(&cpu, &gpu, None, "train-sft --train decoder,projector,vision");
    // The tower's update (final - base) over its trained tensors, as the full run's rule.
    let read = |d: &std::path::Path| stic::weights::WeightStore::open(d).unwrap();
    let (wb, wc, wg) = (read(&model), read(&cpu), read(&gpu));
    let (mut dc, mut dg, mut moved) = (Vec::new(), Vec::new(), 0);
    for name in wb.names().filter(|n| n.contains("vision_tower")) {
        let s = wb.shape_of(name).unwrap();
        let (b, c, g) = (wb.get(name, &s).unwrap(), wc.get(name, &s).unwrap(), wg.get(name, &s).unwrap());
        if b.data() == c.data() {
            assert!(g.data() == b.data(), "{name}: untrained on the CPU, moved on the GPU");
            continue;
        }
        moved += 1;
        dc.extend(c.data().iter().zip(b.data()).map(|(a, b)| a - b));
        dg.extend(g.data().iter().zip(b.data()).map(|(a, b)| a - b));
    }
    let (nc, ng) = (l2(&dc), l2(&dg));
    let cos = dc.iter().zip(&dg).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (nc * ng).max(f64::MIN_POSITIVE);
    println!("vision CLI run: {moved} tower tensors moved, update norm gpu/cpu {:.3}, cosine {cos:.3}", ng / nc);
    assert!(moved > 0 && (0.8..=1.25).contains(&(ng / nc)) && cos >= 0.5, "tower update norm gpu/cpu {:.3}, cosine {cos:.3}", ng / nc);
    // Resume on the GPU: stopped after step 1, resumed: the same files, bit for bit.
    let common = ["--max-steps", "2", "--save-every", "1"];
    let a = train_parts("train-sft", &model, parts, "cuda", "vresume-a", &common);
    let b = train_parts("train-sft", &model, parts, "cuda", "vresume-b", &[&common[..], &["--stop-after", "1"]].concat());
    let b2 = train_parts("train-sft", &model, parts, "cuda", "vresume-b", &[&common[..], &["--resume"]].concat());
    assert_eq!(b, b2);
    for f in ["model.safetensors", "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "train_log.jsonl"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs after resuming on the GPU");
    }
    let _ = std::fs::remove_dir_all(&model);
}

/// `--train vision` on a tower whose head dim the attention backward does not take (the
/// fixture's 8): a clear error that names the way out.
#[test]
fn train_vision_on_cuda_refuses_unsupported_head_dims_clearly() {
    if cuda(Cuda::new).is_none() {
        return;
    }
    let model = fixtures().join("llava15_tiny");
    let (data, images) = (fixtures().join("sft/llava.json"), fixtures().join("sft"));
    let out = std::env::temp_dir().join(format!("stic-test-{}-cuda-vision", std::process::id()));
    let (ok, _, err) = stic(&[
        "train-sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--image-folder", images.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--train", "decoder,vision", "--device", "cuda", "--quiet",
    ]);
    assert!(!ok && err.contains("--train vision") && err.contains("head dim") && err.contains("--device cpu"), "{err}");
}

/// `--train decoder` and `--train projector` alone on the GPU: the losses and gradients as the
/// CPU's, and the part that does not train written as the base's, bit for bit.
#[test]
fn train_one_part_cuda_matches_cpu() {
    if cuda(Cuda::new).is_none() {
        return;
    }
    let model = tiny64_with_weights("cuda-full-parts", 17);
    let base = stic::weights::WeightStore::open(&model).unwrap();
    for part in ["decoder", "projector"] {
        let steps = ["--max-steps", "2", "--max-grad-norm", "1e30"];
        let (cpu, gpu) = (train_parts("train-sft", &model, part, "cpu", part, &steps), train_parts("train-sft", &model, part, "cuda", part, &steps));
        compare_outputs(&cpu, &gpu, None, &format!("train-sft --train {part}"));
        let out = stic::weights::WeightStore::open(&gpu).unwrap();
        let (mut moved, mut kept) = (0, 0);
        for name in base.names() {
            let s = base.shape_of(name).unwrap();
            let same = base.get(name, &s).unwrap().data() == out.get(name, &s).unwrap().data();
            let trains = if part == "projector" { name.contains("multi_modal_projector") } else { name.contains("language_model") || name.starts_with("lm_head") };
            assert!(same != trains, "--train {part}: {name} {}", if same { "did not move" } else { "moved" });
            if same { kept += 1 } else { moved += 1 }
        }
        println!("--train {part} on cuda: {moved} tensors moved, {kept} kept");
    }
    let _ = std::fs::remove_dir_all(&model);
}
