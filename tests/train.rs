//! Training on the CPU reference: DPO on the tiny LLaVA-NeXT fixture learns, the batched pair
//! gradient equals the per-sequence ones, and a trained adapter round-trips through PEFT's format.

mod common;

use common::*;
use stic::adapter::{init_lora, load_adapter, save_adapter, LoraSpec};
use stic::generate::Pipeline;
use stic::image::load_image;
use stic::optim::AdamWConfig;
use stic::train::{dpo_pair_grads, reference_logps, response_logprob_grads, Pair, TrainAdamW};

fn spec() -> LoraSpec {
    LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].iter().map(|s| s.to_string()).collect(),
    }
}

fn pairs(pipe: &Pipeline) -> Vec<Pair> {
    ["images/wide.jpg", "images/tall.png"]
        .iter()
        .map(|p| Pair {
            prompt: pipe.format_prompt("Describe the image.", 1, false),
            images: vec![load_image(&fixtures().join(p)).unwrap()],
            chosen: "A red square and a blue circle.".into(),
            rejected: "A dog asleep on a sofa.".into(),
        })
        .collect()
}

#[test]
fn dpo_steps_raise_the_margin_and_lower_the_loss() {
    let mut pipe = Pipeline::load(&fixtures().join("llava_next_tiny")).unwrap();
    assert_eq!(init_lora(&mut pipe.model, &spec(), 0).unwrap(), 14);
    let pairs = pairs(&pipe);
    let refs: Vec<(f64, f64)> = pairs.iter().map(|p| reference_logps(&mut pipe, p).unwrap()).collect();
    let mut opt = TrainAdamW::new(AdamWConfig { lr: 5e-3, weight_decay: 0.0, ..Default::default() });
    let eval = |pipe: &Pipeline| -> (f64, f64) {
        let outs: Vec<_> = pairs.iter().zip(&refs).map(|(p, r)| dpo_pair_grads(pipe, p, *r, 0.1, 0.0, Default::default()).unwrap().0).collect();
        let n = outs.len() as f64;
        (outs.iter().map(|o| o.loss).sum::<f64>() / n, outs.iter().map(|o| o.chosen_reward - o.rejected_reward).sum::<f64>() / n)
    };
    let (loss0, margin0) = eval(&pipe);
    // B starts at zero: the policy equals the reference, so the loss is ln 2 and the margin 0.
    assert!((loss0 - std::f64::consts::LN_2).abs() < 1e-6 && margin0.abs() < 1e-6, "{loss0} {margin0}");
    for step in 0..30 {
        let i = step % pairs.len();
        let (_, grads, _) = dpo_pair_grads(&pipe, &pairs[i], refs[i], 0.1, 0.0, Default::default()).unwrap();
        let lr = opt.cfg.lr;
        opt.step(&mut pipe, &grads, lr, 0.0).unwrap();
    }
    let (loss1, margin1) = eval(&pipe);
    eprintln!("loss {loss0:.4} -> {loss1:.4}, margin {margin0:.4} -> {margin1:.4}");
    assert!(loss1 < loss0 - 0.05 && margin1 > margin0 + 0.5, "loss {loss0} -> {loss1}, margin {margin0} -> {margin1}");

    // Round trip through PEFT's format: a fresh pipeline with the saved adapter scores the same.
    let dir = std::env::temp_dir().join(format!("stic-trained-adapter-{}", std::process::id()));
    save_adapter(&mut pipe.model, &dir, &spec(), false).unwrap();
    let mut fresh = Pipeline::load(&fixtures().join("llava_next_tiny")).unwrap();
    assert_eq!(load_adapter(&mut fresh.model, &dir).unwrap(), 14);
    let p = &pairs[0];
    let (a, b) = (pipe.score(&p.prompt, &p.images, &p.chosen).unwrap(), fresh.score(&p.prompt, &p.images, &p.chosen).unwrap());
    assert_eq!(a.logprobs, b.logprobs);
}

#[test]
fn pair_gradient_equals_per_sequence_gradients() {
    // One forward/backward over [chosen, rejected] together must equal d_chosen * grad(pc) +
    // d_rejected * grad(pr) from two separate single-sequence passes.
    let mut pipe = Pipeline::load_with(&fixtures().join("llava_next_tiny"), None, Some(&fixtures().join("adapter_next_tiny"))).unwrap();
    let pair = pairs(&pipe).remove(0);
    let reference = reference_logps(&mut pipe, &pair).unwrap();
    let (out, joint, _) = dpo_pair_grads(&pipe, &pair, reference, 0.1, 1.0 / 1024.0, Default::default()).unwrap();
    let joint = joint.lora;
    let (_, gc) = response_logprob_grads(&pipe, &pair.prompt, &pair.images, &pair.chosen, Default::default(), |l| vec![out.d_chosen; l.len()]).unwrap();
    let gc = gc.lora;
    let (_, gr) = response_logprob_grads(&pipe, &pair.prompt, &pair.images, &pair.rejected, Default::default(), |l| vec![out.d_rejected; l.len()]).unwrap();
    let gr = gr.lora;
    assert_eq!(joint.len(), gc.len());
    for ((j, c), r) in joint.iter().zip(&gc).zip(&gr) {
        assert_eq!((j.0, j.1), (c.0, c.1));
        for (x, (y, z)) in j.2.iter().chain(&j.3).zip(c.2.iter().chain(&c.3).zip(r.2.iter().chain(&r.3))) {
            assert!((x - (y + z)).abs() <= 1e-5 * (1.0 + x.abs()), "layer {} {}: {x} vs {}", j.0, j.1, y + z);
        }
    }
}

#[test]
fn shared_prefix_pair_equals_two_separate_sequences() {
    // [prompt | chosen | rejected] packed once under the shared-prefix mask gives the loss and
    // LoRA gradients of running (prompt + chosen) and (prompt + rejected) separately.
    let mut pipe = Pipeline::load_with(&fixtures().join("llava_next_tiny"), None, Some(&fixtures().join("adapter_next_tiny"))).unwrap();
    for pair in pairs(&pipe) {
        let reference = reference_logps(&mut pipe, &pair).unwrap();
        let (a, ga, ta) = dpo_pair_grads(&pipe, &pair, reference, 0.1, 1.0 / 1024.0, Default::default()).unwrap();
        let (b, gb, tb) = stic::train::dpo_pair_grads_packed(&pipe, &pair, reference, 0.1, 1.0 / 1024.0, Default::default()).unwrap();
        // The packed sequence holds the image and prompt once.
        assert!(tb < ta, "packed {tb} tokens vs {ta} separate");
        // Per-layer recomputation gives bit-identical gradients (the same deterministic ops rerun).
        let (b2, gb2, _) = stic::train::dpo_pair_grads_packed(&pipe, &pair, reference, 0.1, 1.0 / 1024.0, stic::model::decoder::StepOpts { recompute: true, ..Default::default() }).unwrap();
        assert_eq!(b, b2);
        assert_eq!(gb, gb2, "recomputation changed the gradients");
        assert!((a.loss - b.loss).abs() < 1e-5 * (1.0 + a.loss.abs()), "{a:?} vs {b:?}");
        assert!((a.chosen_reward - b.chosen_reward).abs() < 1e-4 && (a.rejected_reward - b.rejected_reward).abs() < 1e-4);
        // The projector's gradients agree too (its rows are shared by both responses when packed).
        let proj = stic::model::decoder::StepOpts { projector: true, ..Default::default() };
        let (_, pa, _) = dpo_pair_grads(&pipe, &pair, reference, 0.1, 1.0 / 1024.0, proj).unwrap();
        let (_, pb, _) = stic::train::dpo_pair_grads_packed(&pipe, &pair, reference, 0.1, 1.0 / 1024.0, proj).unwrap();
        assert_eq!(pa.lora, ga.lora, "training the projector changed the LoRA gradients");
        assert_eq!(pa.projector.len(), 4);
        for ((n, x), (m, y)) in pa.projector.iter().zip(&pb.projector) {
            assert_eq!(n, m);
            let scale = x.iter().map(|v| v.abs()).fold(0f32, f32::max);
            assert!(scale > 0.0, "{n}: zero gradient");
            for (p, q) in x.iter().zip(y) {
                assert!((p - q).abs() <= 1e-4 * scale, "{n}: {p} vs {q} (scale {scale})");
            }
        }
        assert_eq!(ga.lora.len(), gb.lora.len());
        for (x, y) in ga.lora.iter().zip(&gb.lora) {
            assert_eq!((x.0, x.1), (y.0, y.1));
            let scale = x.2.iter().chain(&x.3).map(|v| v.abs()).fold(0f32, f32::max);
            for (p, q) in x.2.iter().chain(&x.3).zip(y.2.iter().chain(&y.3)) {
                assert!((p - q).abs() <= 1e-4 * scale, "layer {} {}: {p} vs {q} (scale {scale})", x.0, x.1);
            }
        }
    }
}

#[test]
fn lora_dropout_masks_are_reproducible_and_active() {
    use stic::model::decoder::StepOpts;
    let mut pipe = Pipeline::load_with(&fixtures().join("llava_next_tiny"), None, Some(&fixtures().join("adapter_next_tiny"))).unwrap();
    let pair = pairs(&pipe).remove(0);
    let reference = reference_logps(&mut pipe, &pair).unwrap();
    let run = |pipe: &Pipeline, opts: StepOpts| stic::train::dpo_pair_grads_packed(pipe, &pair, reference, 0.1, 0.0, opts).unwrap();
    let (_, no_dropout, _) = run(&pipe, StepOpts::default());
    for (_, _, l) in pipe.model.decoder.projections_mut() {
        l.lora.as_mut().unwrap().dropout = 0.3;
    }
    // No seed: evaluation mode, dropout off.
    assert_eq!(run(&pipe, StepOpts::default()).1, no_dropout);
    let seeded = StepOpts { dropout_seed: Some(5), ..Default::default() };
    let (o1, g1, _) = run(&pipe, seeded);
    assert_ne!(g1, no_dropout, "dropout changed nothing");
    // The same seed gives the same masks, also when the backward recomputes the layers.
    assert_eq!(run(&pipe, seeded).1, g1);
    let (o2, g2, _) = run(&pipe, StepOpts { recompute: true, dropout_seed: Some(5), ..Default::default() });
    assert_eq!((o1, g1.clone()), (o2, g2));
    assert_ne!(run(&pipe, StepOpts { dropout_seed: Some(6), ..Default::default() }).1, g1);
}
