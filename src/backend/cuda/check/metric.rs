//! What a check compares and how: a `Case` (expected outputs and the device run), the downloaded
//! `Output`s with their poisoned guards, the tolerance rules (`close_rule`: 2x the CPU's error
//! plus one output rounding, max and mean; `exact`), guard breaches, and the corruptions
//! `Check::self_test` feeds the metric.

use half::bf16;

use crate::backend::cuda::CudaDevice;
use crate::error::Result;

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// The largest error over the outputs (for exact outputs: 0 when identical, else 1).
    pub max_rel_err: f64,
    /// The smallest tolerance of the outputs (0 for exact ones).
    pub tolerance: f64,
    pub pass: bool,
    /// Per output: its error and tolerance, or what went wrong first.
    pub detail: String,
}

/// What one check compares: the expected outputs, and a closure that runs the kernel(s) on a
/// device and returns the outputs in the same order.
pub(super) struct Case {
    pub(super) expect: Vec<Expected>,
    #[allow(clippy::type_complexity)]
    pub(super) device: Box<dyn FnOnce(&CudaDevice) -> Result<Vec<Output>>>,
}

/// Guard elements after every device buffer (before it: the case's offset).
pub(super) const GUARD: usize = 8;
pub(super) const POISON_BF16: u16 = 0x7FFF;
pub(super) const POISON_U32: u32 = 0xFFFF_FFFF;
/// The error floor of the tolerance rule, in units of rms(ref) (`CloseRms`: 1).
const REL_FLOOR: f64 = 1e-2;
/// One bf16 rounding, relative: the `+ 2^-8` of the tolerance rule.
const BF16_ROUNDING: f64 = 1.0 / 256.0;
/// The mean-error rule applies to outputs of at least this many elements ...
pub(super) const MEAN_RULE_MIN: usize = 256;
/// ... with this additive slack (the mean of many roundings is stable; 2x is the real headroom).
const MEAN_SLACK: f64 = 1.0 / 4096.0;
/// One f32 rounding, relative (2^-24): the output-rounding term for f32 outputs ...
const F32_ROUNDING: f64 = 1.0 / 16_777_216.0;
/// ... and the mean rule's slack for them (2^-28, as 2^-12 is to bf16's 2^-8).
const F32_MEAN_SLACK: f64 = 1.0 / 268_435_456.0;

pub(super) enum Expected {
    /// A bf16 output judged by the tolerance rule.
    Close { name: &'static str, reference: Vec<f64>, cpu: Vec<f32> },
    /// A bf16 output judged by the same rule with the error floor at rms(ref) instead of
    /// 1e-2 rms(ref), i.e. relative for large elements and absolute (in units of the rms) for the
    /// rest: flash-attention's own absolute rule. For kernels that round intermediate products to
    /// bf16 (P and dS of the tensor-core attention), where an element that cancels to near zero
    /// carries an absolute error set by its summands; `cpu` then models those roundings.
    CloseRms { name: &'static str, reference: Vec<f64>, cpu: Vec<f32> },
    /// An f32 output judged by the same rule, with the f32 output rounding (2^-24) in place of
    /// bf16's (`cpu` is then used as it is, not rounded to bf16), and the error floor at rms(ref)
    /// as `CloseRms`: f32 outputs are long sums (LoRA's u = x A, the attention lse = m + log l,
    /// log-probs) whose rounding error scales with their summands, not with a result that cancels
    /// to near zero, so a per-element relative error there depends on the order of the sum (the
    /// emulated device showed a 4x spread between two valid orders on such elements).
    CloseF32 { name: &'static str, reference: Vec<f64>, cpu: Vec<f32> },
    /// A bf16 output that must match bit for bit.
    Bf16 { name: &'static str, bits: Vec<u16> },
    /// A u32 output (indices, flags, f32 bits) that must match exactly.
    U32 { name: &'static str, values: Vec<u32> },
}

impl Expected {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Expected::Close { name, .. } | Expected::CloseRms { name, .. } | Expected::CloseF32 { name, .. } | Expected::Bf16 { name, .. } | Expected::U32 { name, .. } => name,
        }
    }
}

/// A downloaded device buffer: `all` is the whole allocation, the output is `all[lo..lo + n]`,
/// the rest are guards that must still hold the poison.
#[derive(Clone)]
pub(super) enum Output {
    Bf16 { all: Vec<u16>, lo: usize, n: usize },
    U32 { all: Vec<u32>, lo: usize, n: usize },
    /// f32 values as their bits (so that the NaN poison compares equal to itself).
    F32 { all: Vec<u32>, lo: usize, n: usize },
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Corruption {
    /// One element 10% off (close) or one bit flipped (exact).
    Value,
    /// One element left poisoned.
    Unwritten,
    /// One guard element overwritten.
    Guard,
    /// Every element 0.8% too large (close outputs of at least MEAN_RULE_MIN elements; 1.6% for
    /// `CloseRms` ones).
    Bias,
}

impl Output {
    /// What a correct kernel would return, from the host expectation (the CPU result for `Close`).
    pub(super) fn emulate(e: &Expected) -> Output {
        let lo = GUARD;
        match e {
            Expected::Close { cpu, .. } | Expected::CloseRms { cpu, .. } => Output::Bf16 { all: guarded(&bf16_bits(cpu), lo, POISON_BF16), lo, n: cpu.len() },
            Expected::CloseF32 { cpu, .. } => Output::F32 { all: guarded(&f32_bits(cpu), lo, POISON_U32), lo, n: cpu.len() },
            Expected::Bf16 { bits, .. } => Output::Bf16 { all: guarded(bits, lo, POISON_BF16), lo, n: bits.len() },
            Expected::U32 { values, .. } => Output::U32 { all: guarded(values, lo, POISON_U32), lo, n: values.len() },
        }
    }

    pub(super) fn corrupt(&mut self, e: &Expected, how: Corruption) {
        match self {
            Output::Bf16 { all, lo, n } => {
                // The element with the largest expected magnitude (always judged relative to itself).
                let i = match e {
                    Expected::Close { reference, .. } | Expected::CloseRms { reference, .. } => (0..*n).max_by(|&a, &b| reference[a].abs().total_cmp(&reference[b].abs())).unwrap_or(0),
                    _ => *n / 2,
                };
                match how {
                    Corruption::Value => {
                        let v = bf16::from_bits(all[*lo + i]).to_f32();
                        all[*lo + i] = if matches!(e, Expected::Close { .. } | Expected::CloseRms { .. }) { bf16::from_f32(v * 1.1).to_bits() } else { all[*lo + i] ^ 1 };
                    }
                    Corruption::Unwritten => all[*lo + i] = POISON_BF16,
                    Corruption::Guard => all[*lo + *n] = 0x3F80,
                    Corruption::Bias => {
                        if let Expected::Close { reference, .. } | Expected::CloseRms { reference, .. } = e {
                            // CloseRms outputs carry ~1e-3 mean noise from their bf16
                            // intermediates: the mean rule resolves a 1.6% bias there, 0.8% else.
                            let bias = if matches!(e, Expected::CloseRms { .. }) { 1.0 / 64.0 } else { 1.0 / 128.0 };
                            for (j, r) in reference.iter().enumerate() {
                                all[*lo + j] = bf16::from_f64(r * (1.0 + bias)).to_bits();
                            }
                        }
                    }
                }
            }
            Output::F32 { all, lo, n } => {
                let reference: &[f64] = match e {
                    Expected::CloseF32 { reference, .. } => reference,
                    _ => &[],
                };
                let i = (0..*n).max_by(|&a, &b| reference[a].abs().total_cmp(&reference[b].abs())).unwrap_or(0);
                match how {
                    Corruption::Value => all[*lo + i] = (f32::from_bits(all[*lo + i]) * 1.1).to_bits(),
                    Corruption::Unwritten => all[*lo + i] = POISON_U32,
                    Corruption::Guard => all[*lo + *n] = 1f32.to_bits(),
                    Corruption::Bias => {
                        for (j, r) in reference.iter().enumerate() {
                            all[*lo + j] = ((r * (1.0 + 1.0 / 128.0)) as f32).to_bits();
                        }
                    }
                }
            }
            Output::U32 { all, lo, n } => match how {
                Corruption::Value => all[*lo + *n / 2] ^= 1,
                Corruption::Unwritten => all[*lo + *n / 2] = POISON_U32,
                Corruption::Guard => all[*lo - 1] = 0,
                Corruption::Bias => {}
            },
        }
    }
}

pub(super) fn guarded<T: Copy>(data: &[T], lo: usize, poison: T) -> Vec<T> {
    let mut v = vec![poison; lo + data.len() + GUARD];
    v[lo..lo + data.len()].copy_from_slice(data);
    v
}

/// Compares every output with its expectation.
pub(super) fn evaluate(expect: &[Expected], got: &[Output]) -> CheckResult {
    let mut r = CheckResult { max_rel_err: 0.0, tolerance: f64::INFINITY, pass: true, detail: String::new() };
    let mut any_close = false;
    if expect.len() != got.len() {
        r.pass = false;
        r.detail = format!("{} outputs, expected {}", got.len(), expect.len());
        return r;
    }
    for (e, g) in expect.iter().zip(got) {
        let name = e.name();
        let (err, tol, ok, what) = match (e, g) {
            (Expected::Close { reference, cpu, .. } | Expected::CloseRms { reference, cpu, .. }, Output::Bf16 { all, lo, n }) => {
                if let Some(bad) = guard_breach(all, *lo, *n, POISON_BF16) {
                    (f64::INFINITY, 0.0, false, bad)
                } else if *n != reference.len() {
                    (f64::INFINITY, 0.0, false, format!("{n} elements, expected {}", reference.len()))
                } else {
                    any_close = true;
                    let out = &all[*lo..*lo + *n];
                    close_rule(
                        reference,
                        cpu.iter().map(|&v| bf16::from_f32(v).to_f32() as f64),
                        out.iter().map(|&b| bf16::from_bits(b).to_f32() as f64),
                        |i| out[i] == POISON_BF16,
                        (BF16_ROUNDING, MEAN_SLACK),
                        if matches!(e, Expected::CloseRms { .. }) { 1.0 } else { REL_FLOOR },
                    )
                }
            }
            (Expected::CloseF32 { reference, cpu, .. }, Output::F32 { all, lo, n }) => {
                if let Some(bad) = guard_breach(all, *lo, *n, POISON_U32) {
                    (f64::INFINITY, 0.0, false, bad)
                } else if *n != reference.len() {
                    (f64::INFINITY, 0.0, false, format!("{n} elements, expected {}", reference.len()))
                } else {
                    any_close = true;
                    let out = &all[*lo..*lo + *n];
                    close_rule(
                        reference,
                        cpu.iter().map(|&v| v as f64),
                        out.iter().map(|&b| f32::from_bits(b) as f64),
                        |i| out[i] == POISON_U32,
                        (F32_ROUNDING, F32_MEAN_SLACK),
                        1.0,
                    )
                }
            }
            (Expected::Bf16 { bits, .. }, Output::Bf16 { all, lo, n }) => exact(all, *lo, *n, bits, POISON_BF16, |b| format!("{b:#06x} ({})", bf16::from_bits(b))),
            (Expected::U32 { values, .. }, Output::U32 { all, lo, n }) => exact(all, *lo, *n, values, POISON_U32, |v| format!("{v} ({v:#010x})")),
            _ => (f64::INFINITY, 0.0, false, "output of the wrong type".to_string()),
        };
        r.max_rel_err = r.max_rel_err.max(err);
        if matches!(e, Expected::Close { .. } | Expected::CloseRms { .. } | Expected::CloseF32 { .. }) {
            r.tolerance = r.tolerance.min(tol);
        }
        r.pass &= ok;
        if !r.detail.is_empty() {
            r.detail.push_str("; ");
        }
        r.detail.push_str(&format!("{name}: {what}"));
    }
    if !any_close {
        r.tolerance = 0.0;
    }
    r
}

/// The tolerance rule on one output (see the module docs): `cpu` is the CPU reference already
/// rounded to the output type, `got` the output, `unwritten(i)` whether element i still holds the
/// poison; `(rounding, mean_slack)` are the output type's one-rounding and mean-rule slack;
/// `floor_rms` the error floor in units of rms(ref).
/// Returns (max error, tolerance, pass, what).
fn close_rule(
    reference: &[f64],
    cpu: impl Iterator<Item = f64>,
    got: impl Iterator<Item = f64> + Clone,
    unwritten: impl Fn(usize) -> bool,
    (rounding, mean_slack): (f64, f64),
    floor_rms: f64,
) -> (f64, f64, bool, String) {
    let n = reference.len();
    let floor = floor_rms * rms(reference);
    let (err_cpu, _, mean_cpu) = rel_err(cpu, reference, floor);
    let (err, at, mean) = rel_err(got.clone(), reference, floor);
    let tol = 2.0 * err_cpu + rounding;
    let mean_tol = 2.0 * mean_cpu + mean_slack;
    let mean_ok = n < MEAN_RULE_MIN || mean <= mean_tol;
    let got_v = got.clone().nth(at).unwrap_or(f64::NAN);
    let note = if n > 0 && unwritten(at) { " (never written)" } else { "" };
    let what = format!(
        "max {err:.3e} <= {tol:.3e}? (cpu {err_cpu:.3e}), mean {mean:.3e} <= {mean_tol:.3e}? (cpu {mean_cpu:.3e}{}), worst [{at}]: got {got_v}{note}, want {}",
        if n < MEAN_RULE_MIN { ", not applied" } else { "" },
        reference.get(at).copied().unwrap_or(f64::NAN)
    );
    (err, tol, err <= tol && mean_ok, what)
}

fn exact<T: Copy + PartialEq>(all: &[T], lo: usize, n: usize, want: &[T], poison: T, show: impl Fn(T) -> String) -> (f64, f64, bool, String) {
    if let Some(bad) = guard_breach(all, lo, n, poison) {
        return (1.0, 0.0, false, bad);
    }
    if n != want.len() {
        return (1.0, 0.0, false, format!("{n} elements, expected {}", want.len()));
    }
    let got = &all[lo..lo + n];
    let wrong = (0..n).filter(|&i| got[i] != want[i]).count();
    match (0..n).find(|&i| got[i] != want[i]) {
        None => (0.0, 0.0, true, "exact".to_string()),
        Some(i) => {
            let note = if got[i] == poison { " (never written)" } else { "" };
            (1.0, 0.0, false, format!("{wrong} of {n} differ; first [{i}]: got {}{note}, want {}", show(got[i]), show(want[i])))
        }
    }
}

/// The first guard element that no longer holds the poison.
fn guard_breach<T: Copy + PartialEq>(all: &[T], lo: usize, n: usize, poison: T) -> Option<String> {
    let bad = (0..lo).chain(lo + n..all.len()).find(|&i| all[i] != poison)?;
    let side = if bad < lo { format!("{} before", lo - bad) } else { format!("{} after", bad - (lo + n) + 1) };
    Some(format!("wrote outside its output: the guard element {side} the output was overwritten"))
}

fn rms(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

/// The relative errors e_i = |got_i - ref_i| / max(|ref_i|, floor): (max, where, mean). Any NaN
/// or infinity counts as an infinite error (a poisoned, never-written element is NaN).
fn rel_err(got: impl Iterator<Item = f64>, reference: &[f64], floor: f64) -> (f64, usize, f64) {
    let (mut worst, mut at, mut sum, mut n) = (0.0f64, 0usize, 0.0f64, 0usize);
    for (i, (g, &r)) in got.zip(reference).enumerate() {
        let e = if g.is_finite() { (g - r).abs() / r.abs().max(floor).max(f64::MIN_POSITIVE) } else { f64::INFINITY };
        // e is never NaN: g and r are finite and the denominator is positive.
        if e > worst {
            (worst, at) = (e, i);
        }
        sum += e;
        n += 1;
    }
    (worst, at, if n == 0 { 0.0 } else { sum / n as f64 })
}

pub(super) fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()
}

pub(super) fn f32_bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}
