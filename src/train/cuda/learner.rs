//! The GPU learner's life: built on a bf16 pipeline, adapters initialised, uploaded, saved and
//! loaded (PEFT format, with the projector), the AdamW state saved and resumed, the fused step;
//! the [`Learner`] impl, and `train_dpo` / `train_sft` on the shared [`train_loop`].

use std::path::Path;

use crate::adapter::{init_loras, proj_index, read_loras, save_loras, LoraSpec};
use crate::backend::cuda::{AdamWTensor, Cuda};
use crate::error::{Error, Result};
use crate::generate::Pipeline;
use crate::model::decoder::{Decoder, PROJECTIONS};
use crate::nn::Lora;
use crate::optim::{AdamWConfig, AdamWState};
use crate::tensor::Tensor;
use crate::train::data::{read_pairs, read_sft_data};
use crate::train::run_loop::{reference_cache, train_loop, ExampleOut, Learner, LogLine, TrainArgs};
use crate::train::TrainAdamW;

use super::state::{Adapter, CudaLearner, DeviceDecoder, DeviceLoras, DeviceProjector};

impl CudaLearner {
    pub fn new(pipe: Pipeline<Cuda>, args: &TrainArgs) -> Result<Self> {
        let dev = pipe.model.decoder.backend().device().clone();
        let tc = &pipe.model.cfg.text;
        for li in 0..pipe.model.decoder.n_layers() {
            let (_, projs, _) = pipe.model.decoder.layer_weights(li);
            if let Some(p) = projs.iter().position(|l| l.bias.is_some()) {
                return Err(Error::Input(format!("layer {li} {} has a bias: LoRA training on --device cuda supports bias-free projections only", PROJECTIONS[p])));
            }
        }
        let inv_freq = dev.rope_inv_freq(tc.head_dim, tc.rope_theta)?;
        let neg_inv_freq = dev.rope_inv_freq_backward(tc.head_dim, tc.rope_theta)?;
        let mut learner = CudaLearner {
            dev,
            cfg: AdamWConfig { lr: args.lr, weight_decay: args.weight_decay, ..Default::default() },
            loras: None,
            projector: None,
            ones: None,
            pending_w: None,
            dropout_seed: None,
            inv_freq,
            neg_inv_freq,
            pipe,
            full: None,
            tower: None,
            parts: args.train,
            base: None,
            shard_bytes: args.shard_mib.max(1) << 20,
        };
        // `--train` trains the projector in full when it names it (LoRA is off then).
        let projector = match args.train {
            Some(p) => p.projector,
            None => args.projector_lr.is_some(),
        };
        if projector {
            learner.projector = Some(learner.projector_state()?);
        }
        if args.train.is_some_and(|p| p.decoder) {
            learner.full = Some(learner.decoder_state()?);
        }
        if args.train.is_some_and(|p| p.vision) {
            learner.tower = Some(learner.tower_state()?);
        }
        Ok(learner)
    }

    /// Every projection as (layer, name, in, out), PEFT order.
    fn shapes(&self) -> Vec<(usize, &'static str, usize, usize)> {
        let s = Decoder::<Cuda>::projection_shapes(&self.pipe.model.cfg.text);
        (0..self.decoder().n_layers()).flat_map(|l| (0..7).map(move |p| (l, PROJECTIONS[p], s[p].0, s[p].1))).collect()
    }

    /// Put host adapters on the device (fresh gradients and moments).
    fn upload(&mut self, loras: Vec<(usize, &'static str, Lora)>) -> Result<()> {
        let first = loras.first().ok_or_else(|| Error::Input("no adapters to train".into()))?;
        let (r, scale, dropout) = (first.2.a.dim(0), first.2.scale, first.2.dropout);
        if let Some((l, n, x)) = loras.iter().find(|(_, _, x)| x.a.dim(0) != r || x.scale != scale || x.dropout != dropout) {
            return Err(Error::Input(format!(
                "layer {l} {n}: rank {} / scale {} / dropout {} differ from the first adapter's {r} / {scale} / {dropout}",
                x.a.dim(0),
                x.scale,
                x.dropout
            )));
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::Input(format!("LoRA dropout {dropout} must be in [0, 1)")));
        }
        if r > crate::backend::cuda::LORA_MAX_RANK {
            return Err(Error::Input(format!("LoRA rank {r} > {} on --device cuda", crate::backend::cuda::LORA_MAX_RANK)));
        }
        let mut host = Vec::new();
        let mut adapters = Vec::new();
        let mut lookup = vec![[None; 7]; self.decoder().n_layers()];
        for (layer, name, l) in &loras {
            let proj = proj_index(name).expect("a projection name");
            let (k, n) = (l.a.dim(1), l.b.dim(0));
            let off_a = host.len();
            host.extend_from_slice(l.a.data());
            let off_b = host.len();
            host.extend_from_slice(l.b.data());
            lookup[*layer][proj] = Some(adapters.len());
            adapters.push(Adapter { layer: *layer, proj, k, n, off_a, off_b });
        }
        let p = self.dev.htod(&host)?;
        let p16 = self.dev.cast_f32_to_bf16(&p)?;
        let z = || self.dev.zeros::<f32>(host.len());
        self.loras = Some(DeviceLoras { r, scale, dropout, adapters, lookup, g: z()?, m: z()?, v: z()?, p, p16, step: 0 });
        self.pending_w = None;
        Ok(())
    }

    /// The adapters back on the host.
    fn download(&self) -> Result<Vec<(usize, &'static str, Lora)>> {
        let Some(l) = &self.loras else { return Ok(Vec::new()) };
        let p = self.dev.dtoh(&l.p)?;
        l.adapters
            .iter()
            .map(|a| {
                let at = Tensor::new(p[a.off_a..a.off_a + l.r * a.k].to_vec(), &[l.r, a.k])?;
                let bt = Tensor::new(p[a.off_b..a.off_b + a.n * l.r].to_vec(), &[a.n, l.r])?;
                Ok((a.layer, PROJECTIONS[a.proj], Lora { a: at, b: bt, scale: l.scale, dropout: l.dropout }))
            })
            .collect()
    }

    /// The accumulated gradients as host tensors (layer, name, dA, dB), raw sums.
    pub fn grads(&self) -> Result<Vec<crate::model::decoder::LoraGrad>> {
        let l = self.loras()?;
        let g = self.dev.dtoh(&l.g)?;
        Ok(l.adapters.iter().map(|a| (a.layer, PROJECTIONS[a.proj], g[a.off_a..a.off_a + l.r * a.k].to_vec(), g[a.off_b..a.off_b + a.n * l.r].to_vec())).collect())
    }

    fn adam_keys(l: &DeviceLoras) -> Vec<(String, usize, usize)> {
        l.adapters
            .iter()
            .flat_map(|a| {
                let name = PROJECTIONS[a.proj];
                [(format!("{}.{name}.A", a.layer), a.off_a, l.r * a.k), (format!("{}.{name}.B", a.layer), a.off_b, a.n * l.r)]
            })
            .collect()
    }
}

impl Learner for CudaLearner {
    fn init_lora(&mut self, spec: &LoraSpec, seed: u64) -> Result<()> {
        let loras = init_loras(&self.shapes(), spec, seed)?;
        self.upload(loras)
    }

    fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let pfile = dir.join(crate::adapter::PROJECTOR_FILE);
        if !dir.join("adapter_config.json").exists() && pfile.exists() {
            // A projector-only folder (LLaVA's alignment stage).
            let ws = crate::weights::WeightStore::from_files(dir, &[pfile])?;
            return self.load_projector(ws, crate::adapter::PROJECTOR_KEY);
        }
        let shapes = Decoder::<Cuda>::projection_shapes(&self.pipe.model.cfg.text);
        let n_layers = self.decoder().n_layers();
        let (loras, projector) = read_loras(dir, |layer, proj| if layer < n_layers { proj_index(proj).map(|i| shapes[i]) } else { None })?;
        self.upload(loras)?;
        match projector {
            Some((ws, prefix)) => self.load_projector(ws, &prefix),
            None => Ok(()),
        }
    }

    fn adapted(&mut self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for a in self.loras.iter().flat_map(|l| &l.adapters) {
            if !names.contains(&PROJECTIONS[a.proj]) {
                names.push(PROJECTIONS[a.proj]);
            }
        }
        names
    }

    fn save_adapter(&mut self, dir: &Path, spec: &LoraSpec, projector: bool) -> Result<()> {
        let params = if projector {
            let pr = self.projector.as_ref().ok_or_else(|| Error::Input("the projector does not train: nothing to save for it".into()))?;
            let p = self.dev.dtoh(&pr.p)?;
            let t = pr
                .params
                .iter()
                .map(|(name, shape, off)| Ok((name.clone(), Tensor::new(p[*off..off + shape.iter().product::<usize>()].to_vec(), shape)?)))
                .collect::<Result<Vec<_>>>()?;
            Some(t)
        } else {
            None
        };
        save_loras(dir, spec, &self.download()?, params.as_deref())
    }

    /// The same file as [`TrainAdamW::save`]: `{layer}.{proj}.{A,B}.{m,v,step}`,
    /// `projector.{name}.*`, `decoder.{name}.*` (`--train decoder`).
    fn save_optimizer(&mut self, path: &Path) -> Result<()> {
        let mut opt = TrainAdamW::new(self.cfg);
        let dev = &self.dev;
        let mut put = |keys: Vec<(String, usize, usize)>, m: &DevBufF32, v: &DevBufF32, step: u64| -> Result<()> {
            let (m, v) = (dev.dtoh(m)?, dev.dtoh(v)?);
            for (key, off, len) in keys {
                opt.set_state(key, AdamWState { step, m: m[off..off + len].to_vec(), v: v[off..off + len].to_vec() });
            }
            Ok(())
        };
        if let Some(l) = &self.loras {
            put(Self::adam_keys(l), &l.m, &l.v, l.step)?;
        }
        if let Some(pr) = &self.projector {
            put(projector_keys(pr), &pr.m, &pr.v, pr.step)?;
        }
        if let Some(f) = &self.full {
            put(decoder_keys(f), &f.m, &f.v, f.step)?;
        }
        if let Some(t) = &self.tower {
            put(tower_keys(t), &t.m, &t.v, t.step)?;
        }
        opt.save(path)
    }

    fn load_optimizer(&mut self, path: &Path) -> Result<()> {
        let mut opt = TrainAdamW::new(self.cfg);
        opt.load(path)?;
        let dev = self.dev.clone();
        // The moments of `keys` (a buffer of n) and their common step.
        let take = |keys: Vec<(String, usize, usize)>, n: usize| -> Result<(DevBufF32, DevBufF32, u64)> {
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            let mut step = None;
            for (key, off, len) in keys {
                let st = opt.state(&key).ok_or_else(|| Error::weights(path, format!("no optimiser state for `{key}`")))?;
                if st.m.len() != len || st.v.len() != len {
                    return Err(Error::weights(path, format!("`{key}`: {} moments for a tensor of {len}", st.m.len())));
                }
                if step.is_some_and(|s| s != st.step) {
                    return Err(Error::weights(path, format!("`{key}`: step {} differs from the other tensors' {step:?}", st.step)));
                }
                step = Some(st.step);
                m[off..off + len].copy_from_slice(&st.m);
                v[off..off + len].copy_from_slice(&st.v);
            }
            Ok((dev.htod(&m)?, dev.htod(&v)?, step.unwrap_or(0)))
        };
        if let Some(l) = self.loras.as_mut() {
            (l.m, l.v, l.step) = take(Self::adam_keys(l), l.p.len())?;
        }
        if let Some(pr) = self.projector.as_mut() {
            (pr.m, pr.v, pr.step) = take(projector_keys(pr), pr.p.len())?;
        }
        if let Some(f) = self.full.as_mut() {
            (f.m, f.v, f.step) = take(decoder_keys(f), f.p.len())?;
        }
        if let Some(t) = self.tower.as_mut() {
            (t.m, t.v, t.step) = take(tower_keys(t), t.p.len())?;
        }
        Ok(())
    }

    fn grad_norm(&mut self) -> Result<f64> {
        self.check_trainable()?;
        let mut sumsq = match &self.loras {
            Some(l) => self.dev.grad_sumsq(&l.g.as_view())?,
            None => 0.0,
        };
        if let Some(pr) = &self.projector {
            sumsq += self.dev.grad_sumsq(&pr.g.as_view())?;
        }
        for f in self.full.iter().chain(&self.tower) {
            sumsq += self.dev.grad_sumsq(&f.g.as_view())?;
        }
        Ok(self.pending_w.unwrap_or(1.0) as f64 * sumsq.sqrt())
    }

    fn step(&mut self, gscale: f32, lr: f32, projector_lr: f32) -> Result<()> {
        let w = self.pending_w.take().unwrap_or(1.0);
        let cfg = self.cfg;
        self.check_trainable()?;
        let dev = self.dev.clone();
        if let Some(l) = self.loras.as_mut() {
            let tensors: Vec<AdamWTensor> = Self::adam_keys(l).iter().map(|&(_, _, len)| AdamWTensor { len, lr, weight_decay: cfg.weight_decay }).collect();
            l.step += 1;
            dev.adamw(&mut l.p.as_view_mut(), &l.g.as_view(), &mut l.m.as_view_mut(), &mut l.v.as_view_mut(), &tensors, &cfg, l.step, w * gscale)?;
            dev.cast_f32_to_bf16_into(&l.p.as_view(), &mut l.p16.as_view_mut())?;
            dev.stream().memset_zeros(&mut l.g).map_err(|e| crate::backend::cuda::cuda_err("memset_zeros", "adapter gradients", e))?;
        }
        if let Some(pr) = self.projector.as_mut() {
            // As TrainAdamW: the projector's own learning rate, no weight decay on biases.
            let tensors: Vec<AdamWTensor> = pr
                .params
                .iter()
                .map(|(name, shape, _)| AdamWTensor { len: shape.iter().product(), lr: projector_lr, weight_decay: if name.ends_with("bias") { 0.0 } else { cfg.weight_decay } })
                .collect();
            pr.step += 1;
            dev.adamw(&mut pr.p.as_view_mut(), &pr.g.as_view(), &mut pr.m.as_view_mut(), &mut pr.v.as_view_mut(), &tensors, &cfg, pr.step, w * gscale)?;
            dev.stream().memset_zeros(&mut pr.g).map_err(|e| crate::backend::cuda::cuda_err("memset_zeros", "projector gradients", e))?;
            self.refresh_projector()?;
        }
        self.step_decoder(lr, w * gscale)?;
        self.step_tower(lr, w * gscale)
    }

    fn save_model(&mut self, dir: &Path) -> Result<()> {
        self.save_full(dir)
    }

    fn load_model(&mut self, dir: &Path) -> Result<()> {
        self.load_full(dir)
    }
}

type DevBufF32 = crate::backend::cuda::DevBuf<f32>;

/// The projector's AdamW state keys (`projector.{name}`, as `TrainAdamW`'s) with their offsets
/// and lengths.
fn projector_keys(pr: &DeviceProjector) -> Vec<(String, usize, usize)> {
    pr.params.iter().map(|(name, shape, off)| (format!("projector.{name}"), *off, shape.iter().product())).collect()
}

/// The decoder's AdamW state keys (`decoder.{name}`, as `TrainAdamW::step_decoder`'s).
fn decoder_keys(f: &DeviceDecoder) -> Vec<(String, usize, usize)> {
    f.params.iter().map(|(name, len, off)| (format!("decoder.{name}"), *off, *len)).collect()
}

/// The vision tower's AdamW state keys (`vision.vision_model.{name}`, as the CPU learner's).
fn tower_keys(t: &DeviceDecoder) -> Vec<(String, usize, usize)> {
    t.params.iter().map(|(name, len, off)| (format!("vision.vision_model.{name}"), *off, *len)).collect()
}

/// A learner for `pipe` (loaded from `base`): with `--train`, the trained parts' f32 masters are
/// read from the base checkpoint (as the CPU learner trains from its f32 weights).
fn learner_for(pipe: Pipeline<Cuda>, base: &Path, args: &TrainArgs) -> Result<CudaLearner> {
    let mut learner = CudaLearner::new(pipe, args)?;
    if args.train.is_some() {
        learner.base = Some(base.to_path_buf());
        learner.load_full(base)?;
    }
    Ok(learner)
}

/// `stic train-dpo --device cuda`: DPO with the adapters trained on the GPU (see the module
/// docs); the same data, order, schedule, logs and checkpoints as [`crate::train::cpu::train_dpo`].
/// `base`: the checkpoint `pipe` was loaded from (`--train` writes model directories from it).
pub fn train_dpo(pipe: Pipeline<Cuda>, base: &Path, data: &Path, out: &Path, args: &TrainArgs, resume: bool, stop_after: Option<usize>) -> Result<Vec<LogLine>> {
    let (pairs, keys) = read_pairs(&pipe, data)?;
    let mut learner = learner_for(pipe, base, args)?;
    let refs = reference_cache(&keys, out, resume, |i| learner.reference_logps(&pairs[i]))?;
    train_loop(&mut learner, pairs.len(), out, args, resume, stop_after, |l, i, opts, w| {
        let (o, tokens) = l.dpo_pair(&pairs[i], refs[i], args.beta, args.sft_weight, w, opts.dropout_seed)?;
        Ok(ExampleOut { loss: o.loss, rewards: Some((o.chosen_reward, o.rejected_reward)), tokens })
    })
}

/// `stic train-sft --device cuda`: SFT with the adapters (and the projector) trained on the GPU;
/// the same data, order, schedule, logs and checkpoints as [`crate::train::cpu::train_sft`].
#[allow(clippy::too_many_arguments)]
pub fn train_sft(
    pipe: Pipeline<Cuda>,
    base: &Path,
    data: &Path,
    image_folder: &Path,
    out: &Path,
    args: &TrainArgs,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<Vec<LogLine>> {
    let (examples, images) = read_sft_data(data, image_folder)?;
    let mut learner = learner_for(pipe, base, args)?;
    train_loop(&mut learner, examples.len(), out, args, resume, stop_after, |l, i, opts, w| {
        let (loss, tokens) = l.sft_example(&examples[i].1, &images[i], w, opts.dropout_seed)?;
        Ok(ExampleOut { loss, rewards: None, tokens })
    })
}
