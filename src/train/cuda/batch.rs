//! A step's attention description on the device: cu_seqlens, max length, positions, and the
//! (prefix, chosen) lengths of a packed DPO pair's shared-prefix mask.

use crate::backend::cuda::DevBuf;
use cudarc::driver::{CudaView};

use crate::backend::cuda::{AttnTrainMask, CudaDevice, VarlenAttn};
use crate::error::Result;
use crate::model::decoder::SeqLayout;

/// A packed batch's attention description, owned.
pub(super) struct Batch {
    pub(super) cu_seqlens: DevBuf<u32>,
    pub(super) max_seqlen: usize,
    /// (prefix, chosen) per sequence for the shared-prefix mask.
    pub(super) pairs: Option<DevBuf<u32>>,
    pub(super) window: Option<usize>,
    pub(super) positions: DevBuf<u32>,
}

/// The attention description of `b` for the model `tc`: the shared-prefix mask when the batch is
/// a packed DPO pair (`sp`: its (prefix, chosen) lengths on the device), causal otherwise.
pub(super) fn varlen<'a>(tc: &crate::config::TextConfig, b: &'a Batch, cu: &'a CudaView<'a, u32>, sp: Option<&'a CudaView<'a, u32>>) -> VarlenAttn<'a> {
    VarlenAttn {
        cu_seqlens: cu,
        max_seqlen: b.max_seqlen,
        n_heads: tc.num_attention_heads,
        n_kv_heads: tc.num_key_value_heads,
        head_dim: tc.head_dim,
        scale: 1.0 / (tc.head_dim as f32).sqrt(),
        mask: match sp {
            Some(pairs) => AttnTrainMask::SharedPrefix { pairs },
            None => AttnTrainMask::Causal { window: b.window },
        },
    }
}

impl Batch {
    /// The attention batch and positions of `layouts` (one packed pair, or plain sequences) for
    /// a model with sliding window `window`.
    pub(super) fn new(dev: &CudaDevice, layouts: &[SeqLayout], window: Option<usize>) -> Result<Batch> {
        let cu = crate::backend::cpu::cu_seqlens(&layouts.iter().map(|l| l.len).collect::<Vec<_>>());
        let pairs: Vec<u32> = layouts.iter().map(|l| l.shared_prefix.unwrap_or((0, 0))).flat_map(|(p, c)| [p as u32, c as u32]).collect();
        let positions: Vec<u32> = layouts.iter().flat_map(|l| l.positions()).map(|p| p as u32).collect();
        let shared = layouts.iter().any(|l| l.shared_prefix.is_some());
        for l in layouts.iter().filter(|l| l.shared_prefix.is_some()) {
            crate::model::decoder::shared_prefix_fits_window(l.len, window)?;
        }
        Ok(Batch {
            cu_seqlens: dev.htod(&cu)?,
            max_seqlen: layouts.iter().map(|l| l.len).max().unwrap_or(1).max(1),
            pairs: if shared { Some(dev.htod(&pairs)?) } else { None },
            window,
            positions: dev.htod(&positions)?,
        })
    }
}
