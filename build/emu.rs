//! The emulated CUDA device's part of the build (issue #14; `build.rs` calls [`build`] after nvcc,
//! with feature `cuda`). Everything lands in `$OUT_DIR/emu/`:
//!
//! 1. A rewritten copy of every `kernels/*.cu` and `*.cuh`. The rewrite is mechanical and keeps
//!    every line where it was (reports name the kernel's own lines):
//!    `__shared__ [__align__(A)] T name[..]..;` -> `EMU_SHARED(T[..].., name);` and
//!    `extern __shared__ [__align__(A)] T name[];` -> `T* name = (T*)::emu::dyn_smem();`.
//!    Each `.cu` copy gets a generated trailer: its kernel table `emu_kernels_<module>[]`
//!    (registry.h `KernelInfo`: name, `emu::trampoline<&NAME>` from kernels/emu/trampoline.h, the
//!    static shared memory and registers ptxas reports for sm_80, `__launch_bounds__`' first
//!    argument as written, so macros resolve in the kernel's own TU).
//! 2. Each copy compiled by g++ as host C++ (`-DSTIC_EMULATOR -include emu/cuda.h`) with
//!    `-fsanitize=thread` instrumentation but no tsan runtime: the sanitizer's `__tsan_*` hooks
//!    (kernels/emu/sanitize.cpp) see every memory access.
//! 3. `registry.cpp`: `emu::registry()`, one `ModuleInfo` per kernel file with the FNV-1a-64 hash
//!    of its fatbin (the image `cuModuleLoadData` receives).
//! 4. `libstic_cuda_emu.so` (SONAME libcuda.so: kernels, registry, sanitizer, kernels/emu/driver)
//!    and `libstic_cublaslt_emu.so` (SONAME libcublasLt.so: kernels/emu/cublaslt, linked against
//!    the first), embedded by `$OUT_DIR/kernels.rs` as `EMU_CUDA_LIB` / `EMU_CUBLASLT_LIB`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Kernel files whose kernels do their work only on sm_90a (their sm_80 code is a `__trap()`
/// stub): the registry takes their registers and shared memory from ptxas's sm_90a entries and
/// marks them `min_arch` 90, so the emulated device runs them only when it reports sm_90
/// (`STIC_CUDA_EMU_ARCH=90`), as a GPU would. The host build defines `__CUDA_ARCH_FEAT_SM90_ALL`
/// (the emulator runs the sm_90a instructions: kernels/emu/sm90_*.h).
const SM90_ONLY: &[&str] = &["attention_hopper"];

/// g++ flags of every emulator object; `KERNEL_FLAGS` are added for the kernel sources.
const CXX_FLAGS: &[&str] = &["-std=c++17", "-O2", "-fPIC", "-ffp-contract=off"];
const KERNEL_FLAGS: &[&str] = &[
    "-x",
    "c++",
    "-fvisibility=hidden",
    "-DSTIC_EMULATOR",
    // The emulator runs the sm_90a instructions (kernels/emu/sm90_*.h): compile the sm_90a paths.
    "-D__CUDA_ARCH_FEAT_SM90_ALL",
    "-include",
    "emu/cuda.h",
    "-fsanitize=thread",
    "--param=tsan-instrument-func-entry-exit=0",
    // The vectoriser may merge two 8-byte accesses into one 16-byte access known only to be
    // 8-aligned, which the sanitizer would report as misaligned.
    "-fno-tree-vectorize",
    // g++ warns that tsan does not support __atomic_thread_fence (cuda.h's fences): the hooks do.
    "-Wno-tsan",
];

/// One `extern "C" __global__` kernel of a source file.
#[derive(Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    /// The first argument of `__launch_bounds__(..)`, as written (a number or a macro).
    pub max_threads: Option<String>,
}

/// What ptxas reports for one kernel on sm_80.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Ptxas {
    pub regs: u32,
    pub smem: u32,
}

/// Builds everything (see the module doc); returns the Rust lines for `kernels.rs`.
pub fn build(manifest: &Path, out: &Path, kernels: &[PathBuf], jobs: usize) -> Result<String, String> {
    let kdir = manifest.join("kernels");
    let edir = kdir.join("emu");
    let dir = out.join("emu");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!("cargo:rerun-if-changed={}", edir.display());
    println!("cargo:rerun-if-env-changed=STIC_EMU_CXX");

    // 1. The rewritten sources (headers too: common.cuh declares a __shared__ array), found
    //    before kernels/ because #include "x.cuh" looks next to the including file first.
    let mut modules = Vec::new();
    for entry in fs::read_dir(&kdir).map_err(|e| format!("{}: {e}", kdir.display()))? {
        let p = entry.map_err(|e| e.to_string())?.path();
        if p.extension().is_none_or(|x| x != "cuh") {
            continue;
        }
        let text = read(&p)?;
        write(&dir.join(p.file_name().unwrap()), &rewrite(&text).map_err(|e| format!("{}: {e}", p.display()))?)?;
    }
    for src in kernels {
        let module = stem(src);
        let text = read(src)?;
        let mut copy = rewrite(&text).map_err(|e| format!("{}: {e}", src.display()))?;
        let found = kernels_of(&text).map_err(|e| format!("{}: {e}", src.display()))?;
        let log = out.join("kernels").join(format!("{module}.ptxas.txt"));
        let arch = if SM90_ONLY.contains(&module.as_str()) { 90 } else { 80 };
        let ptxas = ptxas_for(&read(&log)?, if arch == 90 { "sm_90a" } else { "sm_80" });
        copy.push_str(&trailer(&module, &found, &ptxas, arch).map_err(|e| format!("{}: {e}", log.display()))?);
        write(&dir.join(format!("{module}.cu")), &copy)?;
        let fatbin = fs::read(out.join("kernels").join(format!("{module}.fatbin"))).map_err(|e| format!("{module}.fatbin: {e}"))?;
        let (hash, len) = fatbin_hash(&fatbin).map_err(|e| format!("{module}.fatbin: {e}"))?;
        modules.push((module, hash, len, found.len()));
    }
    write(&dir.join("registry.cpp"), &registry_cpp(&modules))?;

    // 2. Compile: the kernels instrumented; the registry, sanitizer, driver and cuBLASLt not.
    let mut units: Vec<Unit> = modules
        .iter()
        .map(|(m, ..)| Unit::new(dir.join(format!("{m}.cu")), dir.join(format!("{m}.o")), true))
        .collect();
    units.push(Unit::new(dir.join("registry.cpp"), dir.join("registry.o"), false));
    let sanitize = edir.join("sanitize.cpp");
    let sanitize = if sanitize.is_file() {
        sanitize
    } else {
        println!("cargo:warning=kernels/emu/sanitize.cpp is missing: the emulated device links no-op sanitizer hooks (kernels/emu/tests/sanitize_stub.cpp)");
        edir.join("tests/sanitize_stub.cpp")
    };
    units.push(Unit::new(sanitize, dir.join("sanitize.o"), false));
    let driver = cpp_files(&edir.join("driver"))?;
    for d in &driver {
        units.push(Unit::new(d.clone(), dir.join(format!("driver_{}.o", stem(d))), false));
    }
    let mut cublaslt = cpp_files(&edir.join("cublaslt"))?;
    if cublaslt.is_empty() {
        let empty = dir.join("cublaslt_empty.cpp");
        write(&empty, "// kernels/emu/cublaslt/ has no sources yet.\n")?;
        cublaslt.push(empty);
    }
    let n_cuda = units.len();
    for c in &cublaslt {
        units.push(Unit::new(c.clone(), dir.join(format!("cublaslt_{}.o", stem(c))), false));
    }
    compile_all(&units, &kdir, jobs)?;

    // 3. Link.
    let cuda_lib = dir.join("libstic_cuda_emu.so");
    let objs: Vec<&Path> = units[..n_cuda].iter().map(|u| u.obj.as_path()).collect();
    link(&cuda_lib, "libcuda.so", &objs, &[OsArg::S("-lboost_context")])?;
    let lt_lib = dir.join("libstic_cublaslt_emu.so");
    let objs: Vec<&Path> = units[n_cuda..].iter().map(|u| u.obj.as_path()).collect();
    // --no-as-needed: DT_NEEDED libcuda.so even before the cuBLASLt sources call into it.
    link(&lt_lib, "libcublasLt.so", &objs, &[OsArg::S("-Wl,--no-as-needed"), OsArg::P(&cuda_lib)])?;

    let mut rs = String::new();
    let _ = writeln!(rs, "/// The emulated CUDA driver (SONAME libcuda.so) with every kernel compiled for the host (issue #14).");
    let _ = writeln!(rs, "pub const EMU_CUDA_LIB: &[u8] = include_bytes!({:?});", cuda_lib.display().to_string());
    let _ = writeln!(rs, "/// The emulated cuBLASLt subset (SONAME libcublasLt.so; needs EMU_CUDA_LIB loaded RTLD_GLOBAL first).");
    let _ = writeln!(rs, "pub const EMU_CUBLASLT_LIB: &[u8] = include_bytes!({:?});", lt_lib.display().to_string());
    Ok(rs)
}

// ---------------------------------------------------------------------------------------------
// The source rewrite.

/// Rewrites the `__shared__` declarations (see the module doc); everything else is unchanged,
/// line for line. A `__shared__` this cannot rewrite is an error naming the line.
pub fn rewrite(src: &str) -> Result<String, String> {
    let mut out = String::with_capacity(src.len() + 1024);
    for (i, line) in src.split_inclusive('\n').enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let is_decl = body.starts_with("__shared__") || body.starts_with("extern __shared__");
        if !is_decl {
            let code = body.split("//").next().unwrap_or("");
            if code.contains("__shared__") && !body.starts_with("//") && !body.starts_with('*') {
                return Err(format!("line {}: a __shared__ declaration not at the start of its line: {}", i + 1, body.trim_end()));
            }
            out.push_str(line);
            continue;
        }
        let err = |what: &str| format!("line {}: cannot rewrite ({what}): {}", i + 1, body.trim_end());
        let semi = body.find(';').ok_or_else(|| err("no `;` on the line"))?;
        let (decl, rest) = (&body[..semi], &body[semi + 1..]);
        let (ext, decl) = match decl.strip_prefix("extern") {
            Some(d) => (true, d.trim_start()),
            None => (false, decl),
        };
        let mut decl = decl.strip_prefix("__shared__").ok_or_else(|| err("no __shared__"))?.trim_start();
        if let Some(d) = decl.strip_prefix("__align__(") {
            let close = d.find(')').ok_or_else(|| err("unclosed __align__"))?;
            let align: u32 = d[..close].trim().parse().map_err(|_| err("__align__ not a number"))?;
            // runtime.h places every static variable at a 16-byte boundary of the arena;
            // dynamic shared memory starts 16-byte aligned (more is the kernel's own business).
            if align > 16 && !ext {
                return Err(err("static __shared__ aligned above 16 bytes"));
            }
            decl = d[close + 1..].trim_start();
        }
        if decl.contains(',') || decl.contains('=') {
            return Err(err("several declarators or an initializer"));
        }
        let bracket = decl.find('[').unwrap_or(decl.len());
        let (head, dims) = (decl[..bracket].trim_end(), &decl[bracket..]);
        let name_at = head.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |p| p + 1);
        let (ty, name) = (head[..name_at].trim_end(), &head[name_at..]);
        if ty.is_empty() || name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(err("no type and name"));
        }
        let new = if ext {
            if dims.trim() != "[]" {
                return Err(err("extern __shared__ that is not `T name[]`"));
            }
            format!("{ty}* {name} = ({ty}*)::emu::dyn_smem();")
        } else {
            format!("EMU_SHARED({ty}{}, {name});", dims.trim_end())
        };
        out.push_str(indent);
        out.push_str(&new);
        out.push_str(rest);
    }
    Ok(out)
}

/// `src` with comments blanked (newlines kept); string and character literals kept.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    out.push(b' ');
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                out.extend_from_slice(b"  ");
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    out.push(if b[i] == b'\n' { b'\n' } else { b' ' });
                    i += 1;
                }
                out.extend_from_slice(b"  ");
                i += 2;
            }
            q @ (b'"' | b'\'') => {
                out.push(q);
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' {
                        out.push(b[i]);
                        i += 1;
                    }
                    if i < b.len() {
                        out.push(b[i]);
                        i += 1;
                    }
                }
                if i < b.len() {
                    out.push(q);
                    i += 1;
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Every `extern "C" __global__ void [__launch_bounds__(..)] NAME(` of a source, in order.
pub fn kernels_of(src: &str) -> Result<Vec<Kernel>, String> {
    let code = strip_comments(src);
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(p) = code[at..].find("extern \"C\"") {
        let start = at + p;
        at = start + 10;
        let line = code[..start].matches('\n').count() + 1;
        let mut s = code[at..].trim_start();
        let Some(r) = s.strip_prefix("__global__") else { continue };
        s = r.trim_start();
        let err = |what: &str| format!("line {line}: an extern \"C\" __global__ kernel whose declaration cannot be read ({what})");
        s = s.strip_prefix("void").ok_or_else(|| err("not `void`"))?.trim_start();
        let mut max_threads = None;
        if let Some(r) = s.strip_prefix("__launch_bounds__") {
            let r = r.trim_start().strip_prefix('(').ok_or_else(|| err("__launch_bounds__ without `(`"))?;
            let (mut depth, mut first_end, mut close) = (1, None, None);
            for (i, c) in r.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(i);
                            break;
                        }
                    }
                    ',' if depth == 1 && first_end.is_none() => first_end = Some(i),
                    _ => {}
                }
            }
            let close = close.ok_or_else(|| err("unclosed __launch_bounds__"))?;
            max_threads = Some(r[..first_end.unwrap_or(close)].trim().to_string());
            s = r[close + 1..].trim_start();
        }
        let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
        let name = &s[..end];
        if name.is_empty() || !s[end..].trim_start().starts_with('(') {
            return Err(err("no `NAME(`"));
        }
        found.push(Kernel { name: name.to_string(), max_threads });
    }
    if found.is_empty() {
        return Err("no extern \"C\" __global__ kernel".into());
    }
    Ok(found)
}

/// The entries of a ptxas -v log for one target (`sm_80`, `sm_90a`): registers and static shared
/// memory per kernel.
pub fn ptxas_for(log: &str, target: &str) -> HashMap<String, Ptxas> {
    let target = format!("for '{target}'");
    let mut map = HashMap::new();
    let mut cur: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("");
            cur = line.contains(&target).then(|| name.to_string());
            continue;
        }
        let Some(name) = &cur else { continue };
        if let Some(used) = line.split("Used ").nth(1) {
            let mut p = Ptxas::default();
            for part in used.split(',') {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else { continue };
                match (n.parse::<u32>(), what, w.next()) {
                    (Ok(n), "registers", _) => p.regs = n,
                    (Ok(n), "bytes", Some("smem")) => p.smem = n,
                    _ => {}
                }
            }
            map.insert(name.clone(), p);
            cur = None;
        }
    }
    map
}

/// The kernel table appended to a module's rewritten source (see kernels/emu/trampoline.h).
pub fn trailer(module: &str, kernels: &[Kernel], ptxas: &HashMap<String, Ptxas>, min_arch: u32) -> Result<String, String> {
    let mut t = String::from("\n// ---- generated by build.rs (build/emu.rs): this module's kernel table for emu::registry() ----\n");
    t.push_str("#include \"emu/trampoline.h\"\n");
    let _ = writeln!(t, "extern \"C++\" const ::emu::KernelInfo emu_kernels_{module}[] = {{");
    for k in kernels {
        let p = ptxas.get(&k.name).ok_or_else(|| format!("no sm_{min_arch} entry for kernel `{}` in ptxas's report", k.name))?;
        let max = k.max_threads.as_deref().map_or("1024u".to_string(), |m| format!("(unsigned)({m})"));
        let _ = writeln!(t, "    {{{:?}, &::emu::trampoline<&{}>, {}u, {}u, {max}, nullptr, {min_arch}u}},", k.name, k.name, p.smem, p.regs);
    }
    t.push_str("};\n");
    Ok(t)
}

/// FNV-1a-64 of a fatbin image, checking that its header's length (u16 header size at byte 6 +
/// u64 payload size at byte 8, after the magic 0xBA55ED50) is the whole file.
pub fn fatbin_hash(img: &[u8]) -> Result<(u64, u64), String> {
    if img.len() < 16 || u32::from_le_bytes(img[0..4].try_into().unwrap()) != 0xBA55_ED50 {
        return Err("not a fatbin (no 0xBA55ED50 magic)".into());
    }
    let header = u16::from_le_bytes(img[6..8].try_into().unwrap()) as u64;
    let size = u64::from_le_bytes(img[8..16].try_into().unwrap());
    if header + size != img.len() as u64 {
        return Err(format!("the fatbin header says {header} + {size} bytes but the file has {}", img.len()));
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in img {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok((h, img.len() as u64))
}

fn registry_cpp(modules: &[(String, u64, u64, usize)]) -> String {
    let mut s = String::from("// @generated by build.rs (build/emu.rs): emu::registry() over every kernels/*.cu (registry.h).\n");
    s.push_str("#include \"emu/registry.h\"\n\n");
    for (m, ..) in modules {
        let _ = writeln!(s, "extern \"C++\" const emu::KernelInfo emu_kernels_{m}[];");
    }
    s.push_str("\nnamespace {\nconst emu::ModuleInfo modules[] = {\n");
    for (m, hash, len, n) in modules {
        let _ = writeln!(s, "    {{{m:?}, 0x{hash:016x}ull, {len}ull, emu_kernels_{m}, {n}}},");
    }
    let _ = write!(s, "}};\n}}  // namespace\n\nconst emu::ModuleInfo* emu::registry(size_t* n) {{\n    *n = {};\n    return modules;\n}}\n", modules.len());
    s
}

// ---------------------------------------------------------------------------------------------
// g++.

struct Unit {
    src: PathBuf,
    obj: PathBuf,
    kernel: bool,
}
impl Unit {
    fn new(src: PathBuf, obj: PathBuf, kernel: bool) -> Unit {
        Unit { src, obj, kernel }
    }
}

enum OsArg<'a> {
    S(&'a str),
    P(&'a Path),
}

/// The host C++ compiler: `$STIC_EMU_CXX`, else g++ (Debian's g++ 12 is what the flags assume).
fn cxx() -> String {
    std::env::var("STIC_EMU_CXX").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "g++".into())
}

fn compile_one(u: &Unit, kdir: &Path) -> Result<(), String> {
    let mut cmd = Command::new(cxx());
    cmd.args(CXX_FLAGS);
    if u.kernel {
        cmd.args(KERNEL_FLAGS);
    }
    cmd.arg("-I").arg(kdir).arg("-I").arg(kdir.join("emu/sys"));
    cmd.arg("-c").arg(&u.src).arg("-o").arg(&u.obj);
    let o = cmd.output().map_err(|e| format!("cannot run {} (the emulated device needs g++ and libboost-context-dev): {e}", cxx()))?;
    if !o.status.success() {
        return Err(format!(
            "g++ failed on {} ({}):\n{:?}\n{}{}\n",
            u.src.display(),
            o.status,
            cmd,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(())
}

/// Compiles every unit, `jobs` at a time; every failure is reported (file, command, stderr).
fn compile_all(units: &[Unit], kdir: &Path, jobs: usize) -> Result<(), String> {
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::<(usize, String)>::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, units.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= units.len() {
                    break;
                }
                if let Err(e) = compile_one(&units[i], kdir) {
                    errors.lock().unwrap().push((i, e));
                }
            });
        }
    });
    let mut errors = errors.into_inner().unwrap();
    errors.sort();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.into_iter().map(|(_, e)| e).collect())
    }
}

fn link(lib: &Path, soname: &str, objs: &[&Path], extra: &[OsArg]) -> Result<(), String> {
    let mut cmd = Command::new(cxx());
    cmd.args(["-shared", "-o"]).arg(lib).arg(format!("-Wl,-soname,{soname}")).arg("-Wl,-z,defs");
    cmd.args(objs);
    for a in extra {
        match a {
            OsArg::S(s) => cmd.arg(s),
            OsArg::P(p) => cmd.arg(p),
        };
    }
    let o = cmd.output().map_err(|e| format!("cannot run {}: {e}", cxx()))?;
    if !o.status.success() {
        return Err(format!("linking {} failed ({}):\n{:?}\n{}\n", lib.display(), o.status, cmd, String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn cpp_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "cpp")).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    v.sort();
    Ok(v)
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

fn read(p: &Path) -> Result<String, String> {
    fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn write(p: &Path, s: &str) -> Result<(), String> {
    fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()))
}
