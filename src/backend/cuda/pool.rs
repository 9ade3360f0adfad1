//! The device's buffer cache: every device buffer this crate allocates (`CudaDevice::htod`,
//! `zeros`, `alloc_uninit`) is a [`DevBuf`], which on drop goes back to a per-device free list
//! keyed by its size in bytes instead of to the driver; the next request of the same size takes
//! it from there (issue #15 Part 2 (b): zero driver allocations per decode or training step once
//! warm, as PyTorch's caching allocator gives).
//!
//! Reuse needs no event: every buffer is allocated, used and freed on the device's one stream, so
//! a kernel queued by the next owner runs after every kernel queued by the previous one (the same
//! argument as `workspace.rs`, and as cudarc's own stream-ordered free).
//!
//! Bounds: the free lists hold at most `STIC_CUDA_CACHE_MIB` MiB (default 4096); a buffer that
//! would exceed it is freed to the driver's pool instead (which keeps its memory: release threshold
//! u64::MAX, `device.rs`). An allocation that fails for lack of memory empties the free lists
//! and is tried once more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, LaunchArgs, PushKernelArg, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice, DriverError, SyncOnDrop};

/// The free lists of one device (shared by its [`DevBuf`]s, which may outlive the device).
pub(crate) struct BufCache {
    stream: Arc<CudaStream>,
    free: Mutex<Free>,
    cap_bytes: usize,
    /// Requests served from the free lists.
    pub(crate) hits: AtomicU64,
    /// Buffers allocated from the driver (requests the free lists could not serve).
    pub(crate) allocs: AtomicU64,
}

#[derive(Default)]
struct Free {
    by_bytes: HashMap<usize, Vec<CUdeviceptr>>,
    bytes: usize,
}

impl BufCache {
    pub(crate) fn new(stream: Arc<CudaStream>) -> Arc<Self> {
        let mib = std::env::var("STIC_CUDA_CACHE_MIB").ok().and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(4096);
        Arc::new(Self { stream, free: Mutex::new(Free::default()), cap_bytes: mib << 20, hits: AtomicU64::new(0), allocs: AtomicU64::new(0) })
    }

    /// A buffer of `bytes` bytes from the free lists, if one is there.
    fn take(&self, bytes: usize) -> Option<CUdeviceptr> {
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let p = f.by_bytes.get_mut(&bytes)?.pop()?;
        f.bytes -= bytes;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(p)
    }

    /// Frees every cached buffer to the driver (stream-ordered).
    pub(crate) fn trim(&self) {
        let drained: Vec<(usize, Vec<CUdeviceptr>)> = {
            let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
            f.bytes = 0;
            f.by_bytes.drain().collect()
        };
        for (bytes, ptrs) in drained {
            for p in ptrs {
                // SAFETY: `p` came from a CudaSlice<u8>-compatible allocation of `bytes` bytes on
                // this stream (`DevBuf::drop` leaked it); dropping the slice frees it on the stream.
                drop(unsafe { self.stream.upgrade_device_ptr::<u8>(p, bytes) });
            }
        }
    }

    /// The bytes held by the free lists now.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// A buffer of `n` elements: from the free lists, else from `alloc` (retried once after
    /// [`Self::trim`] when the device is out of memory). `fresh` tells which it was.
    pub(crate) fn get<T: DeviceRepr>(
        self: &Arc<Self>,
        n: usize,
        alloc: impl Fn() -> Result<CudaSlice<T>, DriverError>,
    ) -> Result<(DevBuf<T>, bool), DriverError> {
        let bytes = n * std::mem::size_of::<T>();
        if bytes > 0 {
            if let Some(p) = self.take(bytes) {
                // SAFETY: `p` is a live allocation of exactly `bytes` bytes on this stream, no
                // longer owned by anyone (see `DevBuf::drop`); `T` is plain data (DeviceRepr).
                let buf = unsafe { self.stream.upgrade_device_ptr::<T>(p, n) };
                return Ok((DevBuf { buf: Some(buf), cache: Some(self.clone()) }, false));
            }
        }
        let buf = match alloc() {
            Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                self.trim();
                alloc()?
            }
            r => r?,
        };
        self.allocs.fetch_add(1, Ordering::Relaxed);
        Ok((DevBuf { buf: Some(buf), cache: Some(self.clone()) }, true))
    }
}

impl Drop for BufCache {
    fn drop(&mut self) {
        self.trim();
    }
}

/// A device buffer of the crate's: a `CudaSlice<T>` (it derefs to one) that goes back to its
/// device's [`BufCache`] when dropped (see the module header).
pub struct DevBuf<T: DeviceRepr> {
    buf: Option<CudaSlice<T>>,
    cache: Option<Arc<BufCache>>,
}

impl<T: DeviceRepr> DevBuf<T> {
    /// A buffer that is not cached on drop (e.g. an empty one).
    pub(crate) fn uncached(buf: CudaSlice<T>) -> Self {
        Self { buf: Some(buf), cache: None }
    }
    /// The inner slice, taken out of the cache's reach (freed to the driver when dropped).
    pub fn into_inner(mut self) -> CudaSlice<T> {
        self.buf.take().expect("present until drop")
    }
}

impl<T: DeviceRepr> Drop for DevBuf<T> {
    fn drop(&mut self) {
        let (Some(buf), Some(cache)) = (self.buf.take(), self.cache.take()) else { return };
        let bytes = buf.num_bytes();
        if bytes == 0 {
            return;
        }
        let mut f = cache.free.lock().unwrap_or_else(|p| p.into_inner());
        if f.bytes + bytes > cache.cap_bytes {
            return; // `buf` drops after the guard: freed to the driver's pool
        }
        f.bytes += bytes;
        f.by_bytes.entry(bytes).or_default().push(buf.leak());
    }
}

impl<T: DeviceRepr> std::ops::Deref for DevBuf<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        self.buf.as_ref().expect("present until drop")
    }
}
impl<T: DeviceRepr> std::ops::DerefMut for DevBuf<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        self.buf.as_mut().expect("present until drop")
    }
}

impl<T: DeviceRepr> DeviceSlice<T> for DevBuf<T> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn stream(&self) -> &Arc<CudaStream> {
        (**self).stream()
    }
}
impl<T: DeviceRepr> DevicePtr<T> for DevBuf<T> {
    fn device_ptr<'a>(&'a self, stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (**self).device_ptr(stream)
    }
}
impl<T: DeviceRepr> DevicePtrMut<T> for DevBuf<T> {
    fn device_ptr_mut<'a>(&'a mut self, stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (**self).device_ptr_mut(stream)
    }
}

impl<T: DeviceRepr> std::fmt::Debug for DevBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DevBuf[{}]", self.len())
    }
}

/// A copy on the device (stream-ordered), in a buffer from the same cache. Panics when the device
/// fails, as `CudaSlice::clone` does.
impl<T: DeviceRepr> Clone for DevBuf<T> {
    fn clone(&self) -> Self {
        let Some(cache) = &self.cache else { return Self::uncached((**self).clone()) };
        let n = self.len();
        // SAFETY: every element is written by the copy below before anything reads it.
        let (mut b, _) = cache.get(n, || unsafe { cache.stream.alloc::<T>(n) }).expect("DevBuf::clone: device allocation");
        cache.stream.memcpy_dtod(&**self, &mut *b).expect("DevBuf::clone: device copy");
        b
    }
}

// Kernel arguments: as the `CudaSlice` they deref to.
// SAFETY: forwards to cudarc's own impls for `&CudaSlice<T>` / `&mut CudaSlice<T>`.
unsafe impl<'a, 'b: 'a, T: DeviceRepr> PushKernelArg<&'b DevBuf<T>> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b DevBuf<T>) -> &mut Self {
        self.arg(&**arg)
    }
}
// SAFETY: as above.
unsafe impl<'a, 'b: 'a, T: DeviceRepr> PushKernelArg<&'b mut DevBuf<T>> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b mut DevBuf<T>) -> &mut Self {
        self.arg(&mut **arg)
    }
}
