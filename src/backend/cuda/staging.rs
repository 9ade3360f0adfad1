//! Pinned staging for the host <-> device copies of the decode and training loops (issue #15
//! Part 2 (c)). A copy from pageable host memory makes the driver stage it through its own pinned
//! buffer and return only when the source has been consumed; from page-locked memory it is a
//! true stream-ordered DMA. So `CudaDevice::htod`, `htod_into` and `dtoh` copy through a ring of
//! page-locked host memory (`STAGING_BYTES`, allocated on the first copy with cuMemHostAlloc):
//!
//! - host -> device: the data is written into the next free region of the ring, the copy is
//!   queued from there, and an event recorded after it marks when the region may be written again.
//!   A region is reused only after its event completed (waited for when the ring wraps onto it:
//!   with a ring far larger than a step's uploads, in practice never).
//! - device -> host: the copy goes into a ring region, the stream is synchronised (the caller
//!   needs the data now anyway), and the bytes are copied out; the region is free at once.
//!
//! Copies larger than the ring (weights, optimizer state at load and save) go directly, pageable:
//! they are not per-step. `CudaDevice::copy_counts` tells how many copies took each path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DeviceRepr, DriverError, PinnedHostSlice};

/// The ring's size: far above the per-step copies (ids, positions, sequence offsets, sampled
/// tokens, a batch's targets), far below any weight.
pub(crate) const STAGING_BYTES: usize = 8 << 20;
/// Region alignment (the DMA engines' preferred granularity).
const ALIGN: usize = 256;

pub(crate) struct Staging {
    ring: Mutex<Option<Ring>>,
    /// Copies that went through the ring / directly from pageable memory.
    pub(crate) staged: AtomicU64,
    pub(crate) pageable: AtomicU64,
}

struct Ring {
    _buf: PinnedHostSlice<u8>,
    base: *mut u8,
    head: usize,
    /// Host -> device copies still possibly reading their region: (start, end, event), oldest
    /// first.
    in_flight: VecDeque<(usize, usize, CudaEvent)>,
    /// Completed events, recycled.
    spare: Vec<CudaEvent>,
}

// SAFETY: `base` points into `buf`, which the ring owns; every access is under the mutex.
unsafe impl Send for Ring {}

impl Staging {
    pub(crate) fn new() -> Self {
        Self { ring: Mutex::new(None), staged: AtomicU64::new(0), pageable: AtomicU64::new(0) }
    }

    /// Queues a copy of `data` to device address `dst` through the ring; Ok(false) when the data
    /// does not fit it (the caller copies directly).
    pub(crate) fn htod<T: DeviceRepr>(&self, ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>, data: &[T], dst: CUdeviceptr) -> Result<bool, DriverError> {
        let bytes = std::mem::size_of_val(data);
        if bytes > STAGING_BYTES {
            self.pageable.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        let mut g = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let ring = ring(&mut g, ctx)?;
        let start = ring.region(bytes)?;
        // SAFETY: [start, start + bytes) lies in the ring and no queued copy reads it any more
        // (`region` waited); `data` is plain data of `bytes` bytes.
        let src = unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr() as *const u8, ring.base.add(start), bytes);
            std::slice::from_raw_parts(ring.base.add(start) as *const u8, bytes)
        };
        // SAFETY: `dst` is a device buffer of at least `bytes` bytes (the caller's view); the
        // source stays valid and unwritten until the event recorded below completes.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, stream.cu_stream())? };
        let ev = match ring.spare.pop() {
            Some(e) => e,
            None => ctx.new_event(None)?,
        };
        ev.record(stream)?;
        ring.in_flight.push_back((start, start + bytes, ev));
        ring.head = start + bytes;
        self.staged.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Copies `n` elements at device address `src` to a new vector through the ring, after
    /// everything queued on the stream; Ok(None) when they do not fit it.
    pub(crate) fn dtoh<T: DeviceRepr>(&self, ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>, src: CUdeviceptr, n: usize) -> Result<Option<Vec<T>>, DriverError> {
        let bytes = n * std::mem::size_of::<T>();
        if bytes > STAGING_BYTES {
            self.pageable.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let mut g = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let ring = ring(&mut g, ctx)?;
        let start = ring.region(bytes)?;
        // SAFETY: the region is in the ring and free (see `htod`); the device range is the
        // caller's view of `bytes` bytes.
        let dst = unsafe { std::slice::from_raw_parts_mut(ring.base.add(start), bytes) };
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, stream.cu_stream())? };
        stream.synchronize()?;
        let mut out = Vec::<T>::with_capacity(n);
        // SAFETY: the copy has completed (synchronised); `T` is plain data, so any bytes the
        // device wrote are a valid `T`, and `out` has room for `n` of them.
        unsafe {
            std::ptr::copy_nonoverlapping(ring.base.add(start), out.as_mut_ptr() as *mut u8, bytes);
            out.set_len(n);
        }
        self.staged.fetch_add(1, Ordering::Relaxed);
        Ok(Some(out))
    }
}

/// The ring, allocated on first use.
fn ring<'a>(g: &'a mut Option<Ring>, ctx: &Arc<CudaContext>) -> Result<&'a mut Ring, DriverError> {
    if g.is_none() {
        // SAFETY: the contents are unset until written; every region is written before a copy
        // reads it. Flags 0: cached (not write-combined) memory, since the host reads it too.
        let mut buf = unsafe { ctx.alloc_pinned_with_flags::<u8>(STAGING_BYTES, 0)? };
        let base = buf.as_mut_ptr()?;
        *g = Some(Ring { _buf: buf, base, head: 0, in_flight: VecDeque::new(), spare: Vec::new() });
    }
    Ok(g.as_mut().expect("just set"))
}

impl Ring {
    /// The start of a free region of `bytes` bytes at the head (wrapping to 0 when it would run
    /// past the end), after waiting for the queued copies that still read any of it.
    fn region(&mut self, bytes: usize) -> Result<usize, DriverError> {
        let mut start = self.head.div_ceil(ALIGN) * ALIGN;
        if start + bytes > STAGING_BYTES {
            start = 0;
        }
        let end = start + bytes.max(1);
        // Wait for the copies that read any of it (only after a wrap), and recycle every event
        // that has completed.
        let mut keep = VecDeque::with_capacity(self.in_flight.len());
        for (s, e, ev) in self.in_flight.drain(..) {
            if s < end && start < e {
                ev.synchronize()?;
                self.spare.push(ev);
            } else if ev.is_complete() {
                self.spare.push(ev);
            } else {
                keep.push_back((s, e, ev));
            }
        }
        self.in_flight = keep;
        Ok(start)
    }
}
