//! Dense GEMM through cuBLASLt: `matmul`, y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) (+ y),
//! `matmul_nn`, y[M, N] = x[M, K] @ w[K, N] (+ y) (the backward's dx = dy W of a Linear), and
//! `matmul_tn`, y[M, N] = x[K, M]^T @ w[K, N] (+ y) (the weight gradient dW = dy^T x).
//!
//! cuBLASLt is column-major; a row-major y[M, N] is the column-major y^T[N, M], and
//! y^T = w · x^T where the row-major w[N, K] is the column-major w^T[K, N] (so op(A) = T) and the
//! row-major x[M, K] is the column-major x^T[K, M] (op(B) = N). cuBLAS's (m, n, k) are our
//! (N, M, K), and the bias of the epilogue runs along cuBLAS's rows, i.e. our N. For `matmul_nn`
//! the row-major w[K, N] is the column-major [N, K] with leading dimension N, used as it is
//! (op(A) = N).
//!
//! The handle (`libcublasLt`, loaded dynamically) and a 32 MiB workspace are created on the first
//! `matmul` and kept in the [`CudaDevice`]; each distinct problem (shape, output type, epilogue,
//! operand alignments) gets a plan (descriptors + the heuristic's algorithm), cached: at most
//! [`MATMUL_PLAN_CACHE_CAPACITY`] plans, the least recently used evicted (and its descriptors
//! destroyed) when a new one would exceed that, so that a long run of ever new shapes (prefill
//! lengths, decode batch sizes, last log-prob chunks) keeps a bounded cache.

use crate::backend::cuda::DevBuf;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use cudarc::cublaslt::result::CublasError;
use cudarc::cublaslt::sys as lt;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr};

use super::{cuda_err, CudaDevice};
use crate::error::{Error, Result};

/// The cuBLASLt workspace: NVIDIA's recommendation for Hopper (32 MiB), enough for every arch.
const WORKSPACE_BYTES: usize = 32 << 20;

mod sealed {
    pub trait Sealed {}
    impl Sealed for u16 {}
    impl Sealed for f32 {}
}

/// Output element types of `matmul`: bf16 bits (u16) or f32.
pub trait MatmulOut: DeviceRepr + sealed::Sealed {
    /// cuBLASLt's type of the C/D matrices.
    #[doc(hidden)]
    const DATA_TYPE: lt::cudaDataType;
    /// For messages and plan keys: "bf16" or "f32".
    #[doc(hidden)]
    const NAME: &'static str;
}

impl MatmulOut for u16 {
    const DATA_TYPE: lt::cudaDataType = lt::cudaDataType::CUDA_R_16BF;
    const NAME: &'static str = "bf16";
}

impl MatmulOut for f32 {
    const DATA_TYPE: lt::cudaDataType = lt::cudaDataType::CUDA_R_32F;
    const NAME: &'static str = "f32";
}

/// What selects a plan: the problem (row-major M, N, K), the output type, the epilogue, beta and
/// the alignment (bytes, a power of two <= 256) of each operand's address (w, x, y, y, bias),
/// which the heuristic must know (its default assumes 256-byte aligned A-D, which sub-views need
/// not be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    m: usize,
    n: usize,
    k: usize,
    out: &'static str,
    bias: bool,
    accumulate: bool,
    /// w is [K, N] (`matmul_nn`, `matmul_tn`: op(A) = N) rather than [N, K] (`matmul`, op(A) = T).
    w_kn: bool,
    /// x is [K, M] (`matmul_tn`: op(B) = T) rather than [M, K].
    x_km: bool,
    align: [u32; 5],
}

/// The most plans a device keeps (LRU). A model uses a few dozen shapes per prefill length or
/// decode batch size, so 256 keeps the plans of a handful of lengths live at once.
pub const MATMUL_PLAN_CACHE_CAPACITY: usize = 256;

/// The plan cache's counters ([`CudaDevice::matmul_plan_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatmulPlanStats {
    /// Plans created (each one a heuristic query) since the device was created.
    pub created: u64,
    /// Plans evicted (descriptors destroyed) to keep the cache at its capacity.
    pub evicted: u64,
    /// Plans in the cache now (at most [`MATMUL_PLAN_CACHE_CAPACITY`]).
    pub cached: usize,
}

/// The plans by key with their last use (a tick of this cache), and the counters.
#[derive(Default)]
struct PlanCache {
    plans: HashMap<PlanKey, (Plan, u64)>,
    tick: u64,
    created: u64,
    evicted: u64,
}

impl PlanCache {
    /// The plan of `key`, made by `create` if it is not cached; a new plan beyond the capacity
    /// evicts the least recently used one first. (Evicting is safe with matmuls still in flight:
    /// cuBLASLt reads the descriptors when a call is enqueued, not when it runs.)
    fn get_or_create<E>(&mut self, key: PlanKey, create: impl FnOnce() -> std::result::Result<Plan, E>) -> std::result::Result<&mut Plan, E> {
        self.tick += 1;
        if !self.plans.contains_key(&key) {
            let plan = create()?;
            self.created += 1;
            if self.plans.len() >= MATMUL_PLAN_CACHE_CAPACITY {
                if let Some(old) = self.plans.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                    self.plans.remove(&old);
                    self.evicted += 1;
                }
            }
            self.plans.insert(key, (plan, self.tick));
        }
        let entry = self.plans.get_mut(&key).expect("present: found or inserted above");
        entry.1 = self.tick;
        Ok(&mut entry.0)
    }

    fn stats(&self) -> MatmulPlanStats {
        MatmulPlanStats { created: self.created, evicted: self.evicted, cached: self.plans.len() }
    }
}

/// A matmul descriptor, the layouts of A (w), B (x) and C = D (y), and the chosen algorithm.
struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    c: lt::cublasLtMatrixLayout_t,
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by this plan (null ones were never created) and is
        // destroyed once; errors on teardown are ignored.
        unsafe {
            for l in [self.a, self.b, self.c] {
                if !l.is_null() {
                    let _ = lt::cublasLtMatrixLayoutDestroy(l);
                }
            }
            if !self.desc.is_null() {
                let _ = lt::cublasLtMatmulDescDestroy(self.desc);
            }
        }
    }
}

/// The device's cuBLASLt state: the handle, the workspace and the plan cache.
pub(crate) struct Blas {
    handle: lt::cublasLtHandle_t,
    workspace: DevBuf<u8>,
    /// Locked for the whole of a `matmul` call: the bias pointer is set on the cached descriptor.
    plans: Mutex<PlanCache>,
}

// SAFETY: the cuBLASLt handle and descriptors are plain heap objects usable from any thread; the
// descriptors are only touched under the `plans` mutex, and the handle is thread-safe for
// cublasLtMatmul (cuBLASLt documents the handle as not bound to a thread).
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans.get_mut().unwrap_or_else(|p| p.into_inner()).plans.clear();
        // SAFETY: the handle was created in `Blas::new` and is destroyed once.
        unsafe {
            let _ = lt::cublasLtDestroy(self.handle);
        }
    }
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas").field("workspace", &self.workspace.len()).finish()
    }
}

impl Blas {
    fn new(dev: &CudaDevice) -> Result<Blas> {
        let op = "cublasLtCreate";
        // cudarc panics when libcublasLt cannot be loaded (or lacks a symbol): check first, and
        // guard the call anyway, as device.rs does for the driver.
        // SAFETY: only tries to dlopen the library.
        if !unsafe { lt::is_culib_present() } {
            return Err(cuda_err(op, "matmul", "the cuBLASLt library (libcublasLt.so) was not found; put the CUDA toolkit's lib directory on LD_LIBRARY_PATH"));
        }
        dev.context().bind_to_thread().map_err(|e| cuda_err(op, "bind context", e))?;
        let handle = match std::panic::catch_unwind(cudarc::cublaslt::result::create_handle) {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(cuda_err(op, "matmul", e)),
            Err(_) => return Err(cuda_err(op, "matmul", "the cuBLASLt library could not be used (missing symbol?)")),
        };
        // SAFETY: the workspace is scratch memory for cuBLASLt; nothing ever reads it on the host.
        let workspace = match unsafe { dev.alloc_uninit::<u8>(WORKSPACE_BYTES) } {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created just above, destroyed once.
                unsafe {
                    let _ = lt::cublasLtDestroy(handle);
                }
                return Err(e);
            }
        };
        Ok(Blas { handle, workspace, plans: Mutex::new(PlanCache::default()) })
    }

    /// Creates the descriptors and asks the heuristic for the best algorithm for `key`.
    /// `bias_ptr` (0 without a bias) is set on the descriptor before the heuristic runs, so that
    /// it sees the real bias address; later calls overwrite it with theirs.
    fn plan(&self, key: &PlanKey, out_type: lt::cudaDataType, bias_ptr: u64) -> std::result::Result<Plan, CublasError> {
        use lt::cublasLtMatmulDescAttributes_t as D;
        use lt::cublasLtMatmulPreferenceAttributes_t as P;
        let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
        // SAFETY: cublasLtMatmulAlgo_t is a plain array of u64 (`data`); all zeros is a valid value
        // (overwritten by the heuristic's choice before the plan is used).
        let algo = unsafe { std::mem::zeroed() };
        let mut plan = Plan { desc: std::ptr::null_mut(), a: std::ptr::null_mut(), b: std::ptr::null_mut(), c: std::ptr::null_mut(), algo };
        let bf16 = lt::cudaDataType::CUDA_R_16BF;
        // SAFETY: every out-pointer is a valid local; every attribute buffer has the size and type
        // cuBLASLt documents for that attribute (int32 transpose ops and data types, uint32
        // epilogue and alignments, uint64 workspace size). Partially built plans are freed by
        // Plan's Drop (handles still null are skipped).
        unsafe {
            // Column-major: A = w^T as stored, [K, N] ld K, used transposed; B = x^T [K, M] ld K;
            // C = D = y^T [N, M] ld N.
            // (`matmul_nn`: A = w as stored, column-major [N, K] ld N, used as it is.)
            if key.w_kn {
                lt::cublasLtMatrixLayoutCreate(&mut plan.a, bf16, n, k, n as i64).result()?;
            } else {
                lt::cublasLtMatrixLayoutCreate(&mut plan.a, bf16, k, n, k as i64).result()?;
            }
            // (`matmul_tn`: B = x as stored, column-major [M, K] ld M, used transposed.)
            if key.x_km {
                lt::cublasLtMatrixLayoutCreate(&mut plan.b, bf16, m, k, m as i64).result()?;
            } else {
                lt::cublasLtMatrixLayoutCreate(&mut plan.b, bf16, k, m, k as i64).result()?;
            }
            lt::cublasLtMatrixLayoutCreate(&mut plan.c, out_type, n, m, n as i64).result()?;
            lt::cublasLtMatmulDescCreate(&mut plan.desc, lt::cublasComputeType_t::CUBLAS_COMPUTE_32F, lt::cudaDataType::CUDA_R_32F).result()?;
            let set = |attr: D, v: *const c_void, size: usize| lt::cublasLtMatmulDescSetAttribute(plan.desc, attr, v, size).result();
            let (trans, no_trans) = (1i32, 0i32); // CUBLAS_OP_T, CUBLAS_OP_N
            let op_a = if key.w_kn { &no_trans } else { &trans };
            set(D::CUBLASLT_MATMUL_DESC_TRANSA, op_a as *const i32 as *const c_void, 4)?;
            let op_b = if key.x_km { &trans } else { &no_trans };
            set(D::CUBLASLT_MATMUL_DESC_TRANSB, op_b as *const i32 as *const c_void, 4)?;
            if key.bias {
                let epilogue = lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32;
                set(D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue as *const u32 as *const c_void, 4)?;
                // The bias is bf16 whatever the output type (the default would be the D type).
                let bias_type = bf16 as i32;
                set(D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type as *const i32 as *const c_void, 4)?;
                set(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr as *const u64 as *const c_void, 8)?;
            }

            let mut pref: lt::cublasLtMatmulPreference_t = std::ptr::null_mut();
            lt::cublasLtMatmulPreferenceCreate(&mut pref).result()?;
            let result = (|| {
                let setp = |attr: P, v: *const c_void, size: usize| lt::cublasLtMatmulPreferenceSetAttribute(pref, attr, v, size).result();
                let ws = WORKSPACE_BYTES as u64;
                setp(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws as *const u64 as *const c_void, 8)?;
                let attrs = [
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ];
                // (The bias alignment, key.align[4], has no preference attribute: it is in the key,
                // and the heuristic sees the bias pointer itself.)
                for (attr, a) in attrs.into_iter().zip(&key.align) {
                    setp(attr, a as *const u32 as *const c_void, 4)?;
                }
                let mut heuristic: lt::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
                let mut count = 0i32;
                lt::cublasLtMatmulAlgoGetHeuristic(self.handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &mut heuristic, &mut count).result()?;
                if count == 0 {
                    return Err(CublasError(lt::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED));
                }
                heuristic.state.result()?;
                Ok(heuristic.algo)
            })();
            let _ = lt::cublasLtMatmulPreferenceDestroy(pref);
            plan.algo = result?;
        }
        Ok(plan)
    }
}

/// The largest power of two (<= 256) that divides a device address: the operand alignment the
/// heuristic may assume.
fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        (1u64 << ptr.trailing_zeros().min(8)) as u32
    }
}

impl CudaDevice {
    /// The cuBLASLt state, created on first use.
    /// The cuBLASLt plan cache's counters (all zero before the first matmul).
    pub fn matmul_plan_stats(&self) -> MatmulPlanStats {
        self.blas.get().map(|b| b.plans.lock().unwrap_or_else(|p| p.into_inner()).stats()).unwrap_or_default()
    }

    fn blas(&self) -> Result<&Blas> {
        if let Some(b) = self.blas.get() {
            return Ok(b);
        }
        let b = Blas::new(self)?;
        // A concurrent first call may have won the race; its Blas is kept and ours dropped.
        let _ = self.blas.set(b);
        Ok(self.blas.get().expect("set above"))
    }

    /// y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), or y += ... when `accumulate` (beta = 1; for fusing
    /// residual adds). x, w, bias bf16; f32 accumulation (CUBLAS_COMPUTE_32F); y bf16 or f32.
    /// w is the PyTorch/HF Linear layout [out, in], row-major.
    ///
    /// The bias is cuBLASLt's BIAS epilogue (added in f32 before the one rounding to the output
    /// type). M = 0 or N = 0 is a no-op; K must be positive. Asynchronous on the device's stream.
    /// Reference: [`crate::backend::cpu::matmul_t`].
    #[allow(clippy::too_many_arguments)]
    pub fn matmul<Y: MatmulOut>(
        &self,
        x: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        bias: Option<&CudaView<'_, u16>>,
        y: &mut CudaViewMut<'_, Y>,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.gemm_lt(x, w, false, false, bias, y, m, n, k, accumulate)
    }

    /// y[M, N] = x[M, K] @ w[K, N], or y += ... when `accumulate`: `matmul` with w stored
    /// row-major [K, N] (no transpose), e.g. dx[M, K] = dy[M, N] @ W[N, K] in a Linear's backward
    /// (call it with n = K, k = N). x, w bf16; f32 accumulation; y bf16 or f32. No bias. M = 0 or
    /// N = 0 is a no-op; K must be positive. Reference: [`crate::backend::cpu::matmul`].
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_nn<Y: MatmulOut>(
        &self,
        x: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        y: &mut CudaViewMut<'_, Y>,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.gemm_lt(x, w, true, false, None, y, m, n, k, accumulate)
    }

    /// y[M, N] = x[K, M]^T @ w[K, N], or y += ... when `accumulate`: the weight gradient of a
    /// Linear, dW[N_out, K_in] = dy[T, N_out]^T @ x[T, K_in] (call it with x = dy, w = x, m =
    /// N_out, n = K_in, k = T), and with w a column of ones its bias gradient. x, w bf16; f32
    /// accumulation; y bf16 or f32. No bias. Reference: [`crate::backend::cpu::matmul`] of the
    /// transposed x.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_tn<Y: MatmulOut>(
        &self,
        x: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        y: &mut CudaViewMut<'_, Y>,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.gemm_lt(x, w, true, true, None, y, m, n, k, accumulate)
    }

    /// `matmul` (w [N, K], x [M, K]), `matmul_nn` (w [K, N], `w_kn`) and `matmul_tn` (also
    /// x [K, M], `x_km`).
    #[allow(clippy::too_many_arguments)]
    fn gemm_lt<Y: MatmulOut>(
        &self,
        x: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        w_kn: bool,
        x_km: bool,
        bias: Option<&CudaView<'_, u16>>,
        y: &mut CudaViewMut<'_, Y>,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<()> {
        let op = if x_km { "matmul_tn" } else if w_kn { "matmul_nn" } else { "matmul" };
        let shapes = || {
            format!(
                "{} @ {}{} -> y [{m}, {n}] {}{}",
                if x_km { format!("x [{k}, {m}]^T") } else { format!("x [{m}, {k}]") },
                if w_kn { format!("w [{k}, {n}]") } else { format!("w [{n}, {k}]^T") },
                if bias.is_some() { " + bias" } else { "" },
                Y::NAME,
                if accumulate { " (accumulate)" } else { "" }
            )
        };
        let elems = |a: usize, b: usize| a.checked_mul(b).ok_or_else(|| Error::shape(op, format!("{}: element count overflows", shapes())));
        let (mk, nk, mn) = (elems(m, k)?, elems(n, k)?, elems(m, n)?);
        if x.len() != mk || w.len() != nk || y.len() != mn {
            return Err(Error::shape(op, format!("{}: but x has {}, w {} and y {} elements", shapes(), x.len(), w.len(), y.len())));
        }
        if let Some(b) = bias {
            if b.len() != n {
                return Err(Error::shape(op, format!("{}: but bias has {} elements, not N={n}", shapes(), b.len())));
            }
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return Err(Error::shape(op, format!("{}: K must be positive", shapes())));
        }
        if [m, n, k].iter().any(|&d| d > i32::MAX as usize) {
            return Err(Error::shape(op, format!("{}: a dimension exceeds 2^31-1", shapes())));
        }

        let blas = self.blas()?;
        self.context().bind_to_thread().map_err(|e| cuda_err(op, shapes(), e))?;
        let stream = self.stream();
        let (w_ptr, _w_sync) = w.device_ptr(stream);
        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let bias_ptr = bias.map(|b| b.device_ptr(stream));
        let (ws_ptr, _ws_sync) = blas.workspace.device_ptr(stream);
        let (y_ptr, _y_sync) = y.device_ptr_mut(stream);
        let key = PlanKey {
            m,
            n,
            k,
            out: Y::NAME,
            bias: bias.is_some(),
            accumulate,
            w_kn,
            x_km,
            align: [alignment(w_ptr), alignment(x_ptr), alignment(y_ptr), alignment(y_ptr), bias_ptr.as_ref().map_or(256, |(p, _)| alignment(*p))],
        };
        let bp: u64 = bias_ptr.as_ref().map_or(0, |(p, _)| *p);
        let mut plans = blas.plans.lock().unwrap_or_else(|p| p.into_inner());
        let plan = plans.get_or_create(key, || {
            blas.plan(&key, Y::DATA_TYPE, bp)
                .map_err(|e| cuda_err(op, format!("{} (operand alignments {:?} bytes)", shapes(), key.align), format!("no cuBLASLt algorithm: {e}")))
        })?;
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0f32 });
        // SAFETY: the layouts describe exactly the checked extents (w: N*K or K*N, x: M*K, y: M*N
        // elements, bias: N), the pointers come from live views of those lengths on this
        // device's context, and y is a distinct &mut view, so D does not overlap A, B or the bias
        // (C = D is cuBLASLt's supported in-place form, same layout). The bias pointer is set on
        // the cached descriptor under the plans lock, which is held until the call has been
        // enqueued (cuBLASLt reads the descriptor at enqueue time). The workspace is this
        // handle's own, used only on this stream, in order. alpha/beta are host f32 scalars
        // (the default pointer mode) matching the f32 scale type.
        unsafe {
            if bias.is_some() {
                lt::cublasLtMatmulDescSetAttribute(
                    plan.desc,
                    lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bp as *const u64 as *const c_void,
                    std::mem::size_of::<u64>(),
                )
                .result()
                .map_err(|e| cuda_err(op, shapes(), e))?;
            }
            lt::cublasLtMatmul(
                blas.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                w_ptr as *const c_void,
                plan.a,
                x_ptr as *const c_void,
                plan.b,
                &beta as *const f32 as *const c_void,
                y_ptr as *const c_void,
                plan.c,
                y_ptr as *mut c_void,
                plan.c,
                &plan.algo,
                ws_ptr as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as *mut _,
            )
            .result()
            .map_err(|e| cuda_err(op, shapes(), e))?;
        }
        drop(plans);
        self.after_op(op, shapes())
    }
}
