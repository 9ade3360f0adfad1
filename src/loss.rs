//! Preference and likelihood losses over sequence log-probabilities (sums over response tokens).
//!
//! DPO (sigmoid, Rafailov et al.): z = (pc - pr) - (rc - rr), loss = -log sigmoid(beta z),
//! where p* are the policy's and r* the reference's log-probs of the chosen (c) and rejected (r)
//! responses. The reference policy is the same model with its adapters switched off.
//! STIC's DPO adds -alpha * pc, a likelihood term on the chosen response: the official trainer
//! (yihedeng9/STIC, stic/dpo_trainer.py @9511f1e) uses alpha = 1/1024 on the summed log-prob
//! (docs/STIC.md). Rewards as TRL logs them: beta (pc - rc) and beta (pr - rr).

/// Result of one DPO pair: the loss, its gradient w.r.t. (pc, pr) (the reference is constant),
/// and the implicit rewards.
#[derive(Clone, Debug, PartialEq)]
pub struct DpoOut {
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
    pub chosen_reward: f64,
    pub rejected_reward: f64,
}

/// `alpha` = 0 for plain DPO, 1/1024 for STIC's.
pub fn dpo(pc: f64, pr: f64, rc: f64, rr: f64, beta: f64, alpha: f64) -> DpoOut {
    let z = (pc - pr) - (rc - rr);
    let x = beta * z;
    // -log sigmoid(x) = softplus(-x), computed without overflow.
    let loss = if x > 0.0 { (-x).exp().ln_1p() } else { -x + x.exp().ln_1p() } - alpha * pc;
    let s = 1.0 / (1.0 + x.exp()); // sigmoid(-x) = d softplus(-x) / d(-x)
    DpoOut {
        loss,
        d_chosen: -beta * s - alpha,
        d_rejected: beta * s,
        chosen_reward: beta * (pc - rc),
        rejected_reward: beta * (pr - rr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_margins_stay_finite() {
        let a = dpo(0.0, -1e4, 0.0, 0.0, 1.0, 0.0);
        assert!(a.loss >= 0.0 && a.loss < 1e-300 && a.d_chosen.abs() < 1e-300);
        let b = dpo(-1e4, 0.0, 0.0, 0.0, 1.0, 0.0);
        assert!((b.loss - 1e4).abs() < 1e-9 && (b.d_chosen + 1.0).abs() < 1e-12);
    }
}
