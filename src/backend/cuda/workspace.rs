//! Scratch buffers reused across calls: a per-device cache of grow-only device buffers keyed by
//! purpose (a `&'static str` naming the op and the buffer, e.g. "attention_split.acc") and element
//! type, so that an op's workspace (the split-KV partials, the lse the inference path discards,
//! the LoRA f32 intermediates, the log-prob chunk buffers, a token-id output) is allocated once
//! and not on every call (issue #15 Part 2 (b)).
//!
//! [`CudaDevice::scratch`] takes the purpose's buffer out of the cache (allocating it, or a larger
//! one, when it is missing or too small) and the returned [`Scratch`] puts it back when dropped.
//! Reuse is safe without any event because every op runs on the device's one stream in order: a
//! kernel queued by a later user of the buffer runs after every kernel queued by an earlier one.
//! Two live users of one purpose (nesting, threads) simply get two buffers; the larger is kept.

use crate::backend::cuda::DevBuf;
use std::any::TypeId;
use std::sync::atomic::Ordering;

use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr};

use super::CudaDevice;
use crate::error::Result;

/// A scratch buffer of `len` elements on loan from the device's cache (see the module header).
pub(crate) struct Scratch<'a, T: DeviceRepr + Send + Sync + 'static> {
    dev: &'a CudaDevice,
    purpose: &'static str,
    buf: Option<DevBuf<T>>,
    len: usize,
}

impl<T: DeviceRepr + Send + Sync + 'static> Scratch<'_, T> {
    /// The first `len` elements (the buffer may be longer).
    pub(crate) fn view(&self) -> CudaView<'_, T> {
        self.buf.as_ref().expect("present until drop").slice(..self.len)
    }
    pub(crate) fn view_mut(&mut self) -> CudaViewMut<'_, T> {
        self.buf.as_mut().expect("present until drop").slice_mut(..self.len)
    }
}

/// The whole buffer, which may be longer than asked: for callers that slice it themselves.
impl<T: DeviceRepr + Send + Sync + 'static> std::ops::Deref for Scratch<'_, T> {
    type Target = DevBuf<T>;
    fn deref(&self) -> &DevBuf<T> {
        self.buf.as_ref().expect("present until drop")
    }
}
impl<T: DeviceRepr + Send + Sync + 'static> std::ops::DerefMut for Scratch<'_, T> {
    fn deref_mut(&mut self) -> &mut DevBuf<T> {
        self.buf.as_mut().expect("present until drop")
    }
}

impl<T: DeviceRepr + Send + Sync + 'static> Drop for Scratch<'_, T> {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        let mut cache = self.dev.workspace.lock().unwrap_or_else(|p| p.into_inner());
        let key = (self.purpose, TypeId::of::<T>());
        let keep = match cache.get(&key).and_then(|b| b.downcast_ref::<DevBuf<T>>()) {
            Some(other) => other.len() < buf.len(),
            None => true,
        };
        if keep {
            cache.insert(key, Box::new(buf));
        }
    }
}

impl CudaDevice {
    /// A scratch buffer of `n` elements for `purpose`, from the cache when it holds one of at
    /// least `n` elements, else newly allocated (counted by [`Self::scratch_alloc_count`]).
    ///
    /// # Safety
    /// As [`Self::alloc_uninit`]: the contents are unspecified (a previous user's data, or
    /// garbage), so the caller must write every element it reads.
    pub(crate) unsafe fn scratch<T: DeviceRepr + Send + Sync + 'static>(&self, purpose: &'static str, n: usize) -> Result<Scratch<'_, T>> {
        let key = (purpose, TypeId::of::<T>());
        let cached = self.workspace.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let cached = cached.and_then(|b| b.downcast::<DevBuf<T>>().ok()).filter(|b| b.len() >= n.max(1));
        let buf = match cached {
            Some(b) => *b,
            None => {
                self.scratch_allocs.fetch_add(1, Ordering::Relaxed);
                // SAFETY: the caller's contract (every element read is written first).
                unsafe { self.alloc_uninit::<T>(n.max(1))? }
            }
        };
        Ok(Scratch { dev: self, purpose, buf: Some(buf), len: n })
    }

    /// How many buffers the scratch cache has allocated (first uses and growths): constant
    /// once a run's largest shapes have been seen.
    pub fn scratch_alloc_count(&self) -> u64 {
        self.scratch_allocs.load(Ordering::Relaxed)
    }
}
