//! AdamW against torch.optim.AdamW (tests/fixtures/expected/adamw.json, scripts/gen_optim_fixture.py).

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
