//! The projector's training on the device (`--projector-lr`): its f32 masters and AdamW state
//! from / to the bf16 weights the model runs with, the image forward that keeps a tape, and the
//! backward from d(input embeddings) to the projector's gradients.

use cudarc::driver::CudaView;

use crate::backend::cuda::{CudaLinear, CudaTensor};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::llava::FeatureRow;
use crate::model::projector::Projector;

use super::state::{CudaLearner, DeviceProjector};

/// What the projector's backward needs from one image's forward.
pub(super) struct ImageTape {
    /// Vision features [N*P, Cv], linear_1's output h and act(h) [N*P, C] (MLP).
    v: CudaTensor,
    h: Option<CudaTensor>,
    a: Option<CudaTensor>,
    /// (row of the sequence, row of the projector's output) of every projected feature row.
    map: Vec<(u32, u32)>,
    /// The vision tower's tape when it trains.
    tower: Option<super::vision::TowerTape>,
}

impl CudaLearner {
    /// Start (fresh moments, masters from the current weights) or stop training the projector.
    pub fn train_projector(&mut self, on: bool) -> Result<()> {
        self.projector = if on { Some(self.projector_state()?) } else { None };
        Ok(())
    }

    /// The projector's current (bf16) weights as the f32 masters of a fresh training state.
    pub(super) fn projector_state(&self) -> Result<DeviceProjector> {
        let mut params = Vec::new();
        let mut len = 0;
        for (prefix, l) in self.pipe.model.projector.linears() {
            params.push((format!("{prefix}weight"), vec![l.n, l.k], len));
            len += l.n * l.k;
            if l.bias.is_some() {
                params.push((format!("{prefix}bias"), vec![l.n], len));
                len += l.n;
            }
        }
        let mut p = self.dev.zeros::<f32>(len)?;
        for (prefix, l) in self.pipe.model.projector.linears() {
            let (_, _, off) = params.iter().find(|(n, _, _)| *n == format!("{prefix}weight")).expect("listed above");
            self.dev.cast_bf16_to_f32_into(&l.weight.as_view(), &mut p.slice_mut(*off..off + l.n * l.k))?;
            if let Some(b) = &l.bias {
                let (_, _, off) = params.iter().find(|(n, _, _)| *n == format!("{prefix}bias")).expect("listed above");
                self.dev.cast_bf16_to_f32_into(&b.as_view(), &mut p.slice_mut(*off..off + l.n))?;
            }
        }
        let z = || self.dev.zeros::<f32>(len);
        Ok(DeviceProjector { params, g: z()?, m: z()?, v: z()?, p, step: 0 })
    }

    /// Copy the f32 masters into the bf16 weights the model runs with.
    pub(super) fn refresh_projector(&mut self) -> Result<()> {
        let Some(pr) = &self.projector else { return Ok(()) };
        let dev = self.dev.clone();
        let mut linears = self.pipe.model.projector.linears_mut();
        for (name, shape, off) in &pr.params {
            let len: usize = shape.iter().product();
            let (prefix, which) = name.rsplit_once('.').map(|(a, b)| (format!("{a}."), b)).unwrap_or((String::new(), name.as_str()));
            let l = linears.iter_mut().find(|(p, _)| *p == prefix).map(|(_, l)| l).ok_or_else(|| Error::Input(format!("no projector linear for `{name}`")))?;
            let dst = if which == "weight" { &mut l.weight } else { l.bias.as_mut().ok_or_else(|| Error::Input(format!("`{name}`: the projector has no bias")))? };
            dev.cast_f32_to_bf16_into(&pr.p.slice(*off..off + len), &mut dst.as_view_mut())?;
        }
        Ok(())
    }

    /// The projector's parameters from `ws` (keys `prefix` + name): into the f32 masters when the
    /// projector trains, and into the bf16 weights the model runs with either way (as the CPU's
    /// `load_adapter` does).
    pub(super) fn load_projector(&mut self, ws: crate::weights::WeightStore, prefix: &str) -> Result<()> {
        let training = self.projector.is_some();
        let mut st = match self.projector.take() {
            Some(st) => st,
            None => self.projector_state()?,
        };
        let mut host = vec![0f32; st.p.len()];
        for (name, shape, off) in &st.params {
            let t = ws.get(&format!("{prefix}{name}"), shape)?;
            host[*off..off + t.data().len()].copy_from_slice(t.data());
        }
        ws.finish()?;
        st.p = self.dev.htod(&host)?;
        self.projector = Some(st);
        self.refresh_projector()?;
        if !training {
            self.projector = None;
        }
        Ok(())
    }

    /// A column of `n` ones (bf16).
    pub(super) fn ones(&mut self, n: usize) -> Result<CudaView<'_, u16>> {
        if self.ones.as_ref().is_none_or(|o| o.len() < n) {
            self.ones = Some(self.dev.htod(&vec![0x3F80u16; n.max(1)])?);
        }
        Ok(self.ones.as_ref().expect("set above").slice(0..n))
    }

    /// `Pipeline::embed`, keeping each image's projector tape (and the tower's) when the
    /// projector or the vision tower trains (then `base` is the row where this sequence starts in
    /// the packed batch).
    pub(super) fn embed(&self, ids: &[u32], images: &[crate::image::RgbImage], base: usize) -> Result<(CudaTensor, Vec<ImageTape>)> {
        if self.projector.is_none() && self.tower.is_none() {
            return Ok((self.pipe.embed(ids, images)?.0, Vec::new()));
        }
        let model = &self.pipe.model;
        let be = model.backend();
        let mut feats = Vec::new();
        let mut tapes = Vec::new();
        for img in images {
            let px = crate::image::preprocess(img, &self.pipe.processor)?;
            let (v, tower) = match self.tower {
                Some(_) => {
                    let (v, t) = self.tower_forward(&px.pixel_values)?;
                    (v, Some(t))
                }
                None => (model.vision_features(&px.pixel_values)?, None),
            };
            let (y, h, a) = match &model.projector {
                Projector::Mlp { linear_1, act, linear_2 } => {
                    let h = be.matmul(&v, linear_1)?;
                    let mut a = h.clone();
                    be.activation(act, &mut a)?;
                    (be.matmul(&a, linear_2)?, Some(h), Some(a))
                }
                Projector::Linear(l) => (be.matmul(&v, l)?, None, None),
            };
            let n = px.pixel_values.dim(0);
            let rows = model.feature_rows(&px, n, y.rows / n.max(1))?;
            feats.push(model.gather_features(&y, &rows)?);
            tapes.push((v, h, a, rows, tower));
        }
        let x = model.embed_with_images(ids, &feats)?;
        // Image j's rows start after the tokens before its <image> and the earlier images' rows.
        let mut out = Vec::new();
        let mut row = base;
        let mut tapes = tapes.into_iter();
        for &t in ids {
            if t == model.cfg.image_token_index {
                let (v, h, a, rows, tower) = tapes.next().expect("embed_with_images checked the count");
                let map: Vec<(u32, u32)> =
                    rows.iter().enumerate().filter_map(|(r, fr)| if let FeatureRow::Projected(i) = *fr { Some(((row + r) as u32, i as u32)) } else { None }).collect();
                row += rows.len();
                out.push(ImageTape { v, h, a, map, tower });
            } else {
                row += 1;
            }
        }
        Ok((x, out))
    }

    /// Add one image's projector gradients (when it trains), given d(input embeddings) `dx`
    /// [T, C]; when the vision tower trains, d(features) on to its backward.
    pub(super) fn projector_bwd(&mut self, tape: &ImageTape, dx: &CudaTensor) -> Result<()> {
        let be = self.decoder().backend().clone();
        let c = dx.cols;
        let np = tape.v.rows;
        // d(projector output) [N*P, C]: the image's feature rows back to the rows they came from
        // (each projected row is used at most once; the cropped padding's rows get 0).
        let src = be.embedding(dx, None, &tape.map.iter().map(|&(r, _)| r).collect::<Vec<_>>())?;
        let mut dy = be.zeros(np, c)?;
        be.scatter_rows(&src, &mut dy, &tape.map.iter().map(|&(_, i)| i).collect::<Vec<_>>())?;
        let dev = self.dev.clone();
        self.ones(np)?;
        let ones = self.ones.as_ref().expect("made above").slice(0..np);
        let mut pr = self.projector.as_mut();
        let linears = self.pipe.model.projector.linears();
        // dW [N, K] += dy^T x, db [N] += dy^T 1 for the linear `prefix` with input x (when the
        // projector trains).
        let mut weight_grads = |prefix: &str, x: &CudaTensor, dy: &CudaTensor, l: &CudaLinear| -> Result<()> {
            let Some(pr) = pr.as_mut() else { return Ok(()) };
            let off = |name: String| pr.params.iter().find(|(n, _, _)| *n == name).map(|(_, _, o)| *o).ok_or_else(|| Error::Input(format!("no projector parameter `{name}`")));
            let ow = off(format!("{prefix}weight"))?;
            dev.matmul_tn(&dy.data.as_view(), &x.data.as_view(), &mut pr.g.slice_mut(ow..ow + l.n * l.k), l.n, l.k, np, true)?;
            if l.bias.is_some() {
                let ob = off(format!("{prefix}bias"))?;
                dev.matmul_tn(&dy.data.as_view(), &ones, &mut pr.g.slice_mut(ob..ob + l.n), l.n, 1, np, true)?;
            }
            Ok(())
        };
        // dx [N*P, K] = dy W of the linear l.
        let input_grad = |dy: &CudaTensor, l: &CudaLinear| -> Result<CudaTensor> {
            // SAFETY (alloc below): matmul_nn writes every element of dx.
            let mut dx = CudaTensor { data: unsafe { dev.alloc_uninit::<u16>(np * l.k) }?, rows: np, cols: l.k };
            dev.matmul_nn(&dy.data.as_view(), &l.weight.as_view(), &mut dx.data.as_view_mut(), np, l.k, l.n, false)?;
            Ok(dx)
        };
        // d(vision features) when the tower trains.
        let dv = match (tape.h.as_ref(), tape.a.as_ref(), &self.pipe.model.projector) {
            (Some(h), Some(a), Projector::Mlp { act, .. }) => {
                let (l1, l2) = (linears[0].1, linears[1].1);
                weight_grads("linear_2.", a, &dy, l2)?;
                // da = dy W2 [N*P, C], then dh = da act'(h) in place.
                let mut da = input_grad(&dy, l2)?;
                dev.activation_backward(act, &h.data.as_view(), &mut da.data.as_view_mut())?;
                weight_grads("linear_1.", &tape.v, &da, l1)?;
                tape.tower.as_ref().map(|_| input_grad(&da, l1)).transpose()?
            }
            (_, _, Projector::Linear(l)) => {
                weight_grads("", &tape.v, &dy, l)?;
                tape.tower.as_ref().map(|_| input_grad(&dy, l)).transpose()?
            }
            _ => return Err(Error::Input("projector tape and projector kind differ".into())),
        };
        if let (Some(t), Some(dv)) = (tape.tower.as_ref(), dv) {
            self.tower_bwd(t, &dv)?;
        }
        Ok(())
    }

    /// The accumulated projector gradients by parameter name (raw sums; empty when the
    /// projector does not train).
    pub fn projector_grads(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let Some(pr) = &self.projector else { return Ok(Vec::new()) };
        let g = self.dev.dtoh(&pr.g)?;
        Ok(pr.params.iter().map(|(name, shape, off)| (name.clone(), g[*off..off + shape.iter().product::<usize>()].to_vec())).collect())
    }
}
