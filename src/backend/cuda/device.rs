//! [`CudaDevice`]: one CUDA context on one GPU, its stream and the embedded kernel modules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{self, CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::{CudaContext, CudaFunction, CudaViewMut, DevicePtr, DevicePtrMut, DriverError, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig};
use cudarc::nvrtc::Ptx;

use super::pool::{BufCache, DevBuf};
use super::staging::Staging;
use super::{cuda_err, kernels};
use crate::error::{Error, Result};

/// True when the CUDA driver library can be loaded and reports at least one device. Never
/// panics: false on a machine without the NVIDIA driver, without a GPU, or with
/// `CUDA_VISIBLE_DEVICES` hiding all of them. The answer is computed once per process.
pub fn cuda_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| device_count().map(|n| n > 0).unwrap_or(false))
}

/// True when `STIC_CUDA_EMU=1`: the CUDA driver and cuBLASLt are the emulated device's
/// (`kernels/emu`), which runs every kernel on the CPU with memory and race checking. Checks and
/// tests use it to pick shapes small enough for the CPU.
pub fn emulated() -> bool {
    std::env::var_os("STIC_CUDA_EMU").is_some_and(|v| v == "1")
}

/// The number of CUDA devices, or why there are none usable.
fn device_count() -> std::result::Result<usize, String> {
    if emulated() {
        super::emu::load()?;
    }
    // cudarc panics when libcuda cannot be loaded, so check for it first; and guard the probe
    // anyway (a driver too old for a symbol cudarc looks up would panic as well).
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) was not found".into());
    }
    match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) => Ok(n.max(0) as usize),
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err("the CUDA driver library could not be used".into()),
    }
}

/// One CUDA context (the primary context of device `ordinal`) with one created stream on which
/// every op is issued in order, and every `kernels/*.cu` module loaded.
///
/// The ops are methods on this type (see `cast.rs`); they are asynchronous on the stream, and
/// copying a result to the host (`dtoh`) waits for them.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    num_sms: u32,
    name: String,
    compute_capability: (i32, i32),
    /// cuBLASLt (handle, workspace, plan cache), created by the first `matmul` (`matmul.rs`).
    pub(super) blas: OnceLock<super::matmul::Blas>,
    /// `STIC_CUDA_SYNC=1` at creation (or [`Self::set_sync_each_op`]): wait for the stream after
    /// every kernel launch and every engine op, so that an asynchronous fault is reported by the
    /// op that caused it rather than by a later sync.
    sync_each_op: AtomicBool,
    /// How many of those synchronisations have run (a counter for the tests).
    op_syncs: AtomicU64,
    /// The buffer cache every [`DevBuf`] returns to (`pool.rs`); it counts the driver
    /// allocations (`htod`, `zeros`, `alloc_uninit`: every allocation goes through them): the
    /// tests' check that a decode or training step allocates nothing once warm.
    bufs: Arc<BufCache>,
    /// The pinned staging ring of the host <-> device copies (`staging.rs`).
    staging: Staging,
    /// The scratch-buffer cache (`workspace.rs`): by (purpose, element type), a `CudaSlice<T>`.
    pub(super) workspace: Mutex<ScratchCache>,
    /// How many buffers that cache has allocated.
    pub(super) scratch_allocs: AtomicU64,
    /// The dynamic shared-memory attribute set on each kernel (bytes), so that it is set once per
    /// kernel (and again only for a larger request) instead of on every launch.
    dyn_smem: Mutex<HashMap<(&'static str, &'static str), usize>>,
    /// How many times that attribute has been set (a counter for the tests).
    dyn_smem_sets: AtomicU64,
    /// Encoded TMA tensor maps by (device address, rows, cols) (`attention_hopper.rs`): a map
    /// depends on nothing else, so a buffer reallocated at the same address reuses it correctly.
    pub(super) tensor_maps: Mutex<HashMap<(u64, usize, usize), sys::CUtensorMap>>,
    /// How many tensor maps have been encoded (a counter for the tests).
    pub(super) tensor_map_encodes: AtomicU64,
}

/// The scratch-buffer cache's map: by (purpose, element type), a boxed `CudaSlice<T>`.
pub(super) type ScratchCache = HashMap<(&'static str, std::any::TypeId), Box<dyn std::any::Any + Send>>;

/// True when `STIC_CUDA_SYNC=1`: see [`CudaDevice::sync_each_op`].
fn sync_each_op_from_env() -> bool {
    std::env::var_os("STIC_CUDA_SYNC").is_some_and(|v| v == "1")
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("num_sms", &self.num_sms)
            .finish()
    }
}

impl CudaDevice {
    /// Opens device `ordinal` and loads every embedded kernel module. Fails (without panicking)
    /// when there is no driver or no such device, or when the driver cannot load a module
    /// (e.g. a driver older than CUDA 13.0, which the kernels are compiled with).
    pub fn new(ordinal: usize) -> Result<Self> {
        let op = "CudaDevice::new";
        let n = device_count().map_err(|e| cuda_err(op, format!("device {ordinal}"), e))?;
        if ordinal >= n {
            return Err(cuda_err(op, format!("device {ordinal}"), format!("only {n} CUDA device(s) present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err(op, format!("device {ordinal}"), e))?;
        // A created stream, not the legacy NULL stream (which synchronises with every other
        // blocking stream of the context, e.g. a library's or a profiler's).
        // cudarc's event tracking (an event recorded at every use of every buffer, for ordering
        // across streams) is off: every buffer of this device is allocated, used and freed on
        // this one stream, in order.
        // SAFETY: the conditions cudarc lists (no use on another stream before the allocation or
        // after the free, no concurrent writes from two streams) hold with a single stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| cuda_err(op, "cuStreamCreate", e))?;
        let name = ctx.name().unwrap_or_else(|_| "?".into());
        let compute_capability = ctx.compute_capability().map_err(|e| cuda_err(op, "compute capability", e))?;
        let num_sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| cuda_err(op, "multiprocessor count", e))? as u32;
        let mut modules = HashMap::new();
        for &(kname, image) in kernels::KERNELS {
            // cuModuleLoadData reads the fatbin in place; the Vec gives it malloc's alignment
            // (include_bytes! data is only byte-aligned).
            let module = ctx.load_module(Ptx::from_binary(image.to_vec())).map_err(|e| {
                cuda_err(
                    op,
                    format!("module kernels/{kname}.cu ({} bytes, {}) on {name} sm_{}{}", image.len(), kernels::GENCODE, compute_capability.0, compute_capability.1),
                    e,
                )
            })?;
            modules.insert(kname, module);
        }
        let dev = CudaDevice {
            ctx,
            bufs: BufCache::new(stream.clone()),
            staging: Staging::new(),
            stream,
            modules,
            functions: Mutex::new(HashMap::new()),
            num_sms,
            name,
            compute_capability,
            blas: OnceLock::new(),
            sync_each_op: AtomicBool::new(sync_each_op_from_env()),
            op_syncs: AtomicU64::new(0),

            workspace: Mutex::new(HashMap::new()),
            scratch_allocs: AtomicU64::new(0),
            dyn_smem: Mutex::new(HashMap::new()),
            dyn_smem_sets: AtomicU64::new(0),
            tensor_maps: Mutex::new(HashMap::new()),
            tensor_map_encodes: AtomicU64::new(0),
        };
        if dev.ctx.has_async_alloc() {
            // Keep freed memory in the pool across syncs (see `pool_release_threshold`).
            dev.set_pool_attr(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX).map_err(|e| cuda_err(op, "memory pool release threshold", e))?;
        }
        Ok(dev)
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }
    pub fn num_sms(&self) -> u32 {
        self.num_sms
    }

    /// The kernel `func` of the module built from `kernels/<module>.cu` (cached after the first
    /// look-up).
    pub fn function(&self, module: &'static str, func: &'static str) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cache.get(&(module, func)) {
            return Ok(f.clone());
        }
        let m = self.modules.get(module).ok_or_else(|| Error::Cuda {
            op: func.to_string(),
            msg: format!("no kernel module kernels/{module}.cu is embedded"),
        })?;
        let f = m.load_function(func).map_err(|e| cuda_err(func, format!("kernels/{module}.cu"), e))?;
        cache.insert((module, func), f.clone());
        Ok(f)
    }

    /// [`Self::function`] for a launch with `smem` bytes of dynamic shared memory: above the
    /// default 48 KiB, the kernel's MAX_DYNAMIC_SHARED_SIZE_BYTES attribute is raised to `smem`,
    /// once per kernel (again only when a later launch needs more). Errors name `op`.
    pub(crate) fn function_with_smem(&self, op: &str, module: &'static str, func: &'static str, smem: usize) -> Result<CudaFunction> {
        let f = self.function(module, func)?;
        if smem <= 48 * 1024 {
            return Ok(f);
        }
        let mut set = self.dyn_smem.lock().unwrap_or_else(|p| p.into_inner());
        if set.get(&(module, func)).is_some_and(|&s| s >= smem) {
            return Ok(f);
        }
        f.set_attribute(CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
            .map_err(|e| cuda_err(op, format!("{func}: {smem} bytes of dynamic shared memory"), e))?;
        self.dyn_smem_sets.fetch_add(1, Ordering::Relaxed);
        set.insert((module, func), smem);
        Ok(f)
    }

    /// How many times a kernel's dynamic shared-memory attribute has been set on this device.
    pub fn dyn_smem_attribute_sets(&self) -> u64 {
        self.dyn_smem_sets.load(Ordering::Relaxed)
    }

    /// How many TMA tensor maps have been encoded on this device (`attention_hopper`).
    pub fn tensor_map_encodes(&self) -> u64 {
        self.tensor_map_encodes.load(Ordering::Relaxed)
    }

    /// A 1-D launch for a grid-stride kernel over `n` elements: `block` threads per block and
    /// enough blocks to cover `n`, capped at 32 blocks per SM (the loop covers the rest).
    pub fn grid_stride_config(&self, n: usize, block: u32) -> LaunchConfig {
        let blocks = n.div_ceil(block as usize).clamp(1, self.num_sms.max(1) as usize * 32);
        LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
    }

    /// How many device buffers this crate has allocated from the driver on this device so far
    /// (empty ones, which allocate nothing, and those the buffer cache served are not counted).
    pub fn alloc_count(&self) -> u64 {
        self.bufs.allocs.load(Ordering::Relaxed)
    }
    /// How many buffer requests the buffer cache has served (no driver allocation).
    pub fn alloc_reuse_count(&self) -> u64 {
        self.bufs.hits.load(Ordering::Relaxed)
    }
    /// The bytes the buffer cache holds for reuse now.
    pub fn cached_bytes(&self) -> usize {
        self.bufs.cached_bytes()
    }
    /// Frees the buffer cache's buffers to the driver (they are otherwise kept for reuse).
    pub fn trim_cache(&self) {
        self.bufs.trim();
    }

    /// How many host <-> device copies went through the pinned staging ring, and how many
    /// directly from pageable memory (those larger than the ring: `staging.rs`).
    pub fn copy_counts(&self) -> (u64, u64) {
        (self.staging.staged.load(Ordering::Relaxed), self.staging.pageable.load(Ordering::Relaxed))
    }

    /// Copies host data to a device buffer (from the buffer cache when it holds one that size),
    /// through the pinned staging ring when it fits.
    pub fn htod<T: DeviceRepr>(&self, data: &[T]) -> Result<DevBuf<T>> {
        // SAFETY: every element is written by the copy below before anything reads it.
        let mut b = unsafe { self.alloc_uninit::<T>(data.len())? };
        if !data.is_empty() {
            self.copy_htod("htod", data, &mut *b)?;
        }
        Ok(b)
    }

    /// The copy of `htod` and `htod_into`: staged when it fits the ring, else direct.
    fn copy_htod<T: DeviceRepr, D: DevicePtrMut<T>>(&self, op: &str, data: &[T], dst: &mut D) -> Result<()> {
        let err = |e| cuda_err(op, format!("[{}]", data.len()), e);
        let staged = {
            let (p, _sync) = dst.device_ptr_mut(&self.stream);
            self.staging.htod(&self.ctx, &self.stream, data, p).map_err(err)?
        };
        if !staged {
            self.stream.memcpy_htod(data, dst).map_err(err)?;
        }
        Ok(())
    }

    /// Copies host data into an existing device buffer of the same length (stream-ordered: after
    /// every op queued before it, so a buffer those ops read may be refilled for later ones).
    pub fn htod_into<T: DeviceRepr>(&self, data: &[T], dst: &mut CudaViewMut<'_, T>) -> Result<()> {
        if data.len() != dst.len() {
            return Err(Error::shape("htod_into", format!("{} host elements into a device buffer of {}", data.len(), dst.len())));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.copy_htod("htod_into", data, dst)
    }

    /// Copies a device buffer (or view) to the host, after everything queued before it on the
    /// stream.
    pub fn dtoh<T: DeviceRepr, S: DevicePtr<T>>(&self, data: &S) -> Result<Vec<T>> {
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e| cuda_err("dtoh", format!("[{}]", data.len()), e);
        let staged = {
            let (p, _sync) = data.device_ptr(&self.stream);
            self.staging.dtoh::<T>(&self.ctx, &self.stream, p, data.len()).map_err(err)?
        };
        match staged {
            Some(v) => Ok(v),
            None => self.stream.clone_dtoh(data).map_err(err),
        }
    }

    /// A device buffer of `n` zeroed elements.
    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, n: usize) -> Result<DevBuf<T>> {
        // SAFETY: every element is written by the memset below before anything reads it.
        let mut b = unsafe { self.alloc_uninit::<T>(n)? };
        if n > 0 {
            self.stream.memset_zeros(&mut *b).map_err(|e| cuda_err("alloc_zeros", format!("[{n}]"), e))?;
        }
        Ok(b)
    }

    /// A new device buffer of `n` elements whose contents are unspecified (an empty one for
    /// `n == 0`).
    ///
    /// # Safety
    /// The caller must write every element before reading it (typically by launching a kernel
    /// that writes all of them); until then the contents are garbage and may be invalid for `T`.
    pub unsafe fn alloc_uninit<T: DeviceRepr>(&self, n: usize) -> Result<DevBuf<T>> {
        if n == 0 {
            return self.stream.null().map(DevBuf::uncached).map_err(|e| cuda_err("alloc", "[0]", e));
        }
        // SAFETY: the caller's contract (every element read is written first).
        let (b, fresh) = self.bufs.get(n, || unsafe { self.stream.alloc::<T>(n) }).map_err(|e| cuda_err("alloc", format!("[{n}]"), e))?;
        if !fresh && super::emulated() {
            // A reused buffer holds its last owner's data: the emulated initcheck forgets it.
            let (p, _sync) = b.device_ptr(&self.stream);
            super::emu::mark_uninit(p, b.num_bytes());
        }
        Ok(b)
    }

    /// Whether every op is followed by a stream synchronisation (`STIC_CUDA_SYNC=1`).
    pub fn sync_each_op(&self) -> bool {
        self.sync_each_op.load(Ordering::Relaxed)
    }
    /// Turns the `STIC_CUDA_SYNC` mode on or off for this device (tests; the CLI uses the env).
    pub fn set_sync_each_op(&self, on: bool) {
        self.sync_each_op.store(on, Ordering::Relaxed);
    }
    /// How many synchronisations the `STIC_CUDA_SYNC` mode has run on this device.
    pub fn op_sync_count(&self) -> u64 {
        self.op_syncs.load(Ordering::Relaxed)
    }

    /// After launching a kernel for `op`: a launch error becomes [`Error::Cuda`] naming `op` and
    /// `shapes`; then [`Self::after_op`].
    pub(crate) fn launched<T>(&self, op: &str, shapes: impl std::fmt::Display, r: std::result::Result<T, DriverError>) -> Result<()> {
        match r {
            Err(e) => Err(cuda_err(op, shapes, e)),
            Ok(_) => self.after_op(op, shapes),
        }
    }

    /// The end of `op`: in the `STIC_CUDA_SYNC` mode, waits for the stream and reports a fault
    /// found there as `op`'s (an asynchronous fault is otherwise reported by whatever syncs next,
    /// e.g. a `dtoh` many ops later). A no-op otherwise.
    pub(crate) fn after_op(&self, op: &str, shapes: impl std::fmt::Display) -> Result<()> {
        if !self.sync_each_op() {
            return Ok(());
        }
        self.op_syncs.fetch_add(1, Ordering::Relaxed);
        self.stream.synchronize().map_err(|e| sync_fault(op, shapes, e))
    }

    /// Waits until every op queued on the stream has finished; reports asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| cuda_err("synchronize", "-", e))
    }

    /// Device memory bandwidth (bytes/s, read + write) of a 1 GiB device-to-device copy: the
    /// best of 5 timed rounds of 4 copies each, after one warm-up copy. The roofline of the
    /// memory-bound benches.
    pub fn measure_bandwidth(&self) -> Result<f64> {
        let n = 1usize << 30;
        let src = self.zeros::<u8>(n)?;
        let mut dst = self.zeros::<u8>(n)?;
        let copy = |dst: &mut CudaSlice<u8>| self.stream.memcpy_dtod(&src, dst).map_err(|e| cuda_err("memcpy_dtod", format!("[{n}] bytes"), e));
        copy(&mut dst)?;
        self.synchronize()?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            for _ in 0..4 {
                copy(&mut dst)?;
            }
            self.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64() / 4.0);
        }
        Ok(2.0 * n as f64 / best)
    }

    /// The high-water mark (bytes) of the stream-ordered allocations, which every buffer of this
    /// crate is (`alloc_uninit`, `zeros`, `htod` draw from the device's default memory pool),
    /// since the last [`Self::reset_peak_memory`]: the peak memory of a training step. None when
    /// the driver has no memory pools (then allocations are not stream-ordered either).
    pub fn peak_memory(&self) -> Result<Option<u64>> {
        if !self.ctx.has_async_alloc() {
            return Ok(None);
        }
        self.pool_attr(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH).map(Some)
    }

    /// The default pool's release threshold (bytes the pool keeps reserved across syncs instead
    /// of returning them to the OS), or None without memory pools. [`Self::new`] sets it to
    /// `u64::MAX`: the driver's default, 0, trims the pool at every synchronisation, so that the
    /// next step's stream-ordered allocations go back to the OS.
    pub fn pool_release_threshold(&self) -> Result<Option<u64>> {
        if !self.ctx.has_async_alloc() {
            return Ok(None);
        }
        self.pool_attr(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD).map(Some)
    }

    /// A cuuint64_t attribute of the default pool.
    fn pool_attr(&self, attr: sys::CUmemPool_attribute) -> Result<u64> {
        let pool = self.default_pool()?;
        let mut v: u64 = 0;
        // SAFETY: `pool` is the device's default pool; the attributes read here are cuuint64_t.
        let r = unsafe { sys::cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut std::ffi::c_void) };
        check_cu("cuMemPoolGetAttribute", r)?;
        Ok(v)
    }

    /// Sets a cuuint64_t attribute of the default pool.
    fn set_pool_attr(&self, attr: sys::CUmemPool_attribute, mut v: u64) -> Result<()> {
        let pool = self.default_pool()?;
        // SAFETY: as above; the attributes written here are cuuint64_t.
        let r = unsafe { sys::cuMemPoolSetAttribute(pool, attr, &mut v as *mut u64 as *mut std::ffi::c_void) };
        check_cu("cuMemPoolSetAttribute", r)
    }

    /// Restart [`Self::peak_memory`] from the memory in use now (after a sync, so that freed
    /// buffers are no longer counted).
    pub fn reset_peak_memory(&self) -> Result<()> {
        if !self.ctx.has_async_alloc() {
            return Ok(());
        }
        self.synchronize()?;
        // Setting USED_MEM_HIGH to 0 resets it to the current use.
        self.set_pool_attr(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)
    }

    fn default_pool(&self) -> Result<sys::CUmemoryPool> {
        self.ctx.bind_to_thread().map_err(|e| cuda_err("memory pool", "bind", e))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: writes the default pool of this context's device into `pool`.
        let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device()) };
        check_cu("cuDeviceGetDefaultMemPool", r)?;
        Ok(pool)
    }

    /// Dense bf16 tensor-core peak (TFLOP/s, no sparsity) from the device's name (NVIDIA's data
    /// sheets), or None for a device this table does not know.
    pub fn peak_bf16_tflops(&self) -> Option<f64> {
        let n = self.name.to_ascii_uppercase();
        if n.contains("H100") && n.contains("PCIE") {
            Some(756.0)
        } else if n.contains("H100") || n.contains("H200") || n.contains("H800") {
            Some(989.0)
        } else if n.contains("A100") || n.contains("A800") {
            Some(312.0)
        } else {
            None
        }
    }
}

/// The error of a fault that the `STIC_CUDA_SYNC` synchronisation after `op` found.
pub(crate) fn sync_fault(op: &str, shapes: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    cuda_err(op, shapes, format!("fault found by the synchronisation after this op (STIC_CUDA_SYNC=1): {e}"))
}

fn check_cu(op: &'static str, r: sys::CUresult) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(cuda_err(op, "-", format!("{r:?}")))
    }
}
