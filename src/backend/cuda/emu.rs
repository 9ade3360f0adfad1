//! The emulated CUDA device (`STIC_CUDA_EMU=1`, issue #14): build.rs compiles every
//! `kernels/*.cu` as host C++ against `kernels/emu` into a fake libcuda, and a CPU cuBLASLt
//! subset into a fake libcublasLt, and embeds both (`kernels::EMU_CUDA_LIB`,
//! `kernels::EMU_CUBLASLT_LIB`).
//!
//! cudarc finds its libraries with `dlopen("libcuda.so")` / `dlopen("libcublasLt.so")`. glibc
//! answers a `dlopen` by name with an already loaded object whose SONAME is that name, so
//! [`load`] loads ours first (SONAMEs `libcuda.so` and `libcublasLt.so`, from memory files, with
//! `RTLD_GLOBAL`) and cudarc then gets them without being patched or told anything. It must run
//! before cudarc's first driver call: `device::device_count` calls it.

use std::ffi::CString;
use std::sync::OnceLock;

use super::kernels;

static LOADED: OnceLock<Result<(), String>> = OnceLock::new();

/// Loads the emulated libcuda and libcublasLt, once per process. Errors say which library and why.
pub(super) fn load() -> Result<(), String> {
    LOADED
        .get_or_init(|| {
            // libcublasLt's DT_NEEDED libcuda.so resolves to the first one by SONAME: load it first.
            // Both memory files stay open until both are loaded: glibc also matches a dlopen by
            // path, and a reused descriptor number would make the second path the first's.
            let cuda = open("libcuda.so", kernels::EMU_CUDA_LIB)?;
            let lt = open("libcublasLt.so", kernels::EMU_CUBLASLT_LIB);
            // SAFETY: closes our own descriptors once (the mappings keep the files alive).
            unsafe { libc::close(cuda) };
            if let Ok(fd) = lt {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
            lt.map(|_| ())
        })
        .clone()
}

/// Writes `image` into an anonymous memory file and dlopens it (RTLD_NOW | RTLD_GLOBAL), leaking
/// the handle: the library stays loaded for the life of the process, as the real driver does.
/// Returns the memory file's descriptor, which the caller closes.
fn open(soname: &str, image: &[u8]) -> Result<i32, String> {
    let what = format!("the emulated {soname} ({} bytes embedded by build.rs)", image.len());
    let name = CString::new(format!("stic-emu-{soname}")).expect("no NUL in the name");
    // SAFETY: memfd_create takes a NUL-terminated name; the returned descriptor is ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(format!("{what}: memfd_create: {}", std::io::Error::last_os_error()));
    }
    let mut written = 0;
    while written < image.len() {
        // SAFETY: writes from a live slice to our own descriptor.
        let n = unsafe { libc::write(fd, image[written..].as_ptr().cast(), image.len() - written) };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closes our descriptor once.
            unsafe { libc::close(fd) };
            return Err(format!("{what}: writing the memory file: {e}"));
        }
        written += n as usize;
    }
    let path = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in the path");
    // SAFETY: dlopen of a complete shared object; its constructors only set up the emulator.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: closes our descriptor once.
        unsafe { libc::close(fd) };
        // SAFETY: dlerror returns a thread-local C string or null.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null dlerror strings are NUL-terminated.
            unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned()
        };
        return Err(format!("{what}: dlopen: {msg} (it needs libboost_context: apt-get install libboost-context-dev)"));
    }
    Ok(fd)
}

/// Marks `bytes` bytes at device address `ptr` as never written (the fake libcuda's
/// `stic_emu_mark_uninit`), so that initcheck treats a buffer reused by the buffer cache
/// (`pool.rs`) like a fresh allocation. A no-op when the emulated device is not loaded.
pub fn mark_uninit(ptr: u64, bytes: usize) {
    static F: OnceLock<Option<extern "C" fn(u64, usize)>> = OnceLock::new();
    let f = F.get_or_init(|| {
        if !matches!(LOADED.get(), Some(Ok(()))) {
            return None;
        }
        let sym = CString::new("stic_emu_mark_uninit").expect("no NUL");
        // SAFETY: looks up a symbol of the libraries loaded RTLD_GLOBAL by `load`.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, sym.as_ptr()) };
        // SAFETY: the fake libcuda defines it as `void stic_emu_mark_uninit(CUdeviceptr, size_t)`.
        (!f.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn(u64, usize)>(f) })
    });
    if let Some(f) = f {
        f(ptr, bytes);
    }
}

/// Turns the emulated device's asynchronous-fault mode on or off (the fake libcuda's
/// `stic_emu_set_async_faults`; `STIC_CUDA_EMU_ASYNC_FAULTS=1` sets it at load): a kernel that
/// faults while running then returns success from its launch, as on a GPU, and the fault is
/// reported by the next synchronisation of its stream. Returns false when the emulated device
/// is not loaded.
pub fn set_async_faults(on: bool) -> bool {
    if !matches!(LOADED.get(), Some(Ok(()))) {
        return false;
    }
    let sym = CString::new("stic_emu_set_async_faults").expect("no NUL");
    // SAFETY: looks up a symbol of the libraries loaded RTLD_GLOBAL by `load`.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, sym.as_ptr()) };
    if f.is_null() {
        return false;
    }
    // SAFETY: the fake libcuda defines it as `void stic_emu_set_async_faults(int)`.
    let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(f) };
    f(on as libc::c_int);
    true
}

/// How many launches of the kernel `name` have completed on the emulated device in this process
/// (the fake libcuda counts them), or `None` when the emulated device is not loaded. Tests use it
/// to check which kernel a path took.
pub fn launch_count(name: &str) -> Option<u64> {
    if !matches!(LOADED.get(), Some(Ok(()))) {
        return None;
    }
    let sym = CString::new("stic_emu_launch_count").expect("no NUL");
    let name = CString::new(name).ok()?;
    // SAFETY: looks up a symbol of the libraries loaded RTLD_GLOBAL by `load`.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, sym.as_ptr()) };
    if f.is_null() {
        return None;
    }
    // SAFETY: the fake libcuda defines it as `uint64_t stic_emu_launch_count(const char*)`.
    let f: extern "C" fn(*const libc::c_char) -> u64 = unsafe { std::mem::transmute(f) };
    Some(f(name.as_ptr()))
}
