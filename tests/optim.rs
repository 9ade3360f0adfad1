//! Training pieces against PyTorch (scripts/gen_torch_goldens.py): AdamW vs torch.optim.AdamW,
//! DPO / STIC-DPO loss and gradients vs autograd.

mod common;

use common::*;
use stic::optim::{AdamWConfig, AdamWState};

#[test]
fn adamw_matches_torch_over_three_steps() {
    let e = read_json("expected/adamw.json");
    let c = &e["config"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
    let cfg = AdamWConfig { lr: f(&c["lr"]), beta1: f(&c["beta1"]), beta2: f(&c["beta2"]), eps: f(&c["eps"]), weight_decay: f(&c["weight_decay"]) };
    let mut p: Vec<f32> = floats(&e["params"]).iter().map(|&x| x as f32).collect();
    let mut st = AdamWState::new(p.len());
    for (gs, want) in e["grads"].as_array().unwrap().iter().zip(e["after_step"].as_array().unwrap()) {
        let g: Vec<f32> = floats(gs).iter().map(|&x| x as f32).collect();
        st.step(&cfg, cfg.lr, &mut p, &g);
        for (a, b) in p.iter().zip(floats(want)) {
            // float32 state on both sides; torch's sqrt/div may round differently by an ulp.
            assert!((*a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

#[test]
fn dpo_and_stic_losses_match_torch() {
    let e = read_json("expected/dpo_loss.json");
    for c in e["cases"].as_array().unwrap() {
        let l = floats(&c["logps"]);
        let g = floats(&c["grad"]);
        let out = stic::loss::dpo(l[0], l[1], l[2], l[3], c["beta"].as_f64().unwrap(), c["alpha"].as_f64().unwrap());
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + b.abs());
        assert!(close(out.loss, c["loss"].as_f64().unwrap()), "{c}: loss {}", out.loss);
        assert!(close(out.d_chosen, g[0]) && close(out.d_rejected, g[1]), "{c}: grads {out:?}");
        assert!(close(out.chosen_reward, c["chosen_reward"].as_f64().unwrap()));
        assert!(close(out.rejected_reward, c["rejected_reward"].as_f64().unwrap()));
    }
}

#[test]
fn lr_schedules_match_transformers() {
    use stic::train::run_loop::{lr_at, TrainArgs, Schedule};
    let e = read_json("expected/schedules.json");
    for c in e["cases"].as_array().unwrap() {
        let args = TrainArgs {
            lora: stic::adapter::LoraSpec { r: 1, alpha: 1.0, dropout: 0.0, targets: vec![] },
            projector_lr: None,
            init_adapter: None,
            quiet: true,
            beta: 0.1,
            sft_weight: 0.0,
            lr: c["lr"].as_f64().unwrap() as f32,
            weight_decay: 0.0,
            epochs: 1,
            batch_size: 1,
            grad_accum: 1,
            max_steps: None,
            warmup_ratio: c["warmup_ratio"].as_f64().unwrap(),
            schedule: if c["schedule"] == "cosine" { Schedule::Cosine } else { Schedule::Linear },
            max_grad_norm: 1.0,
            seed: 0,
            save_every: None,
            recompute: false,
            train: None,
            shard_mib: 5000,
        };
        let total = c["total"].as_u64().unwrap() as usize;
        for (step, want) in floats(&c["lrs"]).iter().enumerate() {
            let got = lr_at(&args, step, total) as f64;
            assert!((got - want).abs() <= 1e-7 * (1.0 + want.abs()), "{c}: step {step}: {got} vs {want}");
        }
    }
}
