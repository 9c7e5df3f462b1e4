//! Link libtorch so that CUDA really is used when present, and so the binary runs without
//! `LD_LIBRARY_PATH`.
//!
//! `torch-sys` asks for `-ltorch_cuda`, but rustc links with `-Wl,--as-needed` and nothing in
//! the binary references a symbol of `libtorch_cuda.so` directly (its CUDA kernels register
//! themselves from static constructors), so the linker drops it and `tch::Cuda::is_available()`
//! says false on a GPU machine. We add it again between `--no-as-needed` / `--as-needed`, but
//! only when the library exists (a CPU-only libtorch has none), and add an rpath to the libtorch
//! library directory found the same way `torch-sys` finds it:
//! `LIBTORCH_LIB` or `LIBTORCH` (+ `/lib`), else with `LIBTORCH_USE_PYTORCH` the active python's
//! `torch.utils.cpp_extension.library_paths()`, else `/usr/lib` when `/usr/lib/libtorch.so` exists.
//!
//! It also compiles `src/data/jpeg_shim.c`, the C layer over the system libjpeg-turbo
//! (Debian: `libjpeg62-turbo-dev`) that `data::jpeg` calls, and links `-ljpeg`.
//! And it compiles `csrc/dist.cpp`, the C ABI over libtorch's c10d that `host train` uses for
//! data-parallel training, against the headers beside that library directory (`../include`, as
//! the pip wheel and the libtorch zip lay them out), with the Gloo declarations of
//! `csrc/gloo_decl` (the wheel ships ProcessGroupGloo.hpp but not Gloo's own headers). The NCCL
//! backend is added when libtorch_cuda, `nccl.h` and a complete CUDA toolkit's headers are found
//! and the shim compiles with them; otherwise multi-rank CUDA training uses Gloo (see
//! host/README.md).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PYTHON_PRINT_LIB_DIR: &str =
    "from torch.utils import cpp_extension\nfor p in cpp_extension.library_paths(): print(p)";

fn env_rerun(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok()
}

fn libtorch_lib_dir() -> Option<PathBuf> {
    if env_rerun("LIBTORCH_USE_PYTORCH").is_some() {
        // Same interpreter choice as torch-sys.
        let python = if env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
        let out = Command::new(python).arg("-c").arg(PYTHON_PRINT_LIB_DIR).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        return text.lines().next().map(|l| PathBuf::from(l.trim()));
    }
    if let Some(lib) = env_rerun("LIBTORCH_LIB") {
        return Some(PathBuf::from(lib).join("lib"));
    }
    if let Some(root) = env_rerun("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    let system = PathBuf::from("/usr/lib");
    system.join("libtorch.so").exists().then_some(system)
}

/// The JPEG decoder's C layer (`data::jpeg`), against the system `jpeglib.h` / `libjpeg.so`.
fn jpeg_shim() {
    println!("cargo:rerun-if-changed=src/data/jpeg_shim.c");
    let built = cc::Build::new().file("src/data/jpeg_shim.c").opt_level(2).warnings(true).try_compile("host_jpeg_shim");
    if let Err(e) = built {
        // A build script fails by panicking; say what is missing.
        panic!("host: cannot compile src/data/jpeg_shim.c against libjpeg-turbo's jpeglib.h (Debian: apt-get install libjpeg62-turbo-dev, or cargo xtask setup): {e}");
    }
    println!("cargo:rustc-link-lib=jpeg");
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    jpeg_shim();
    let Some(dir) = libtorch_lib_dir() else {
        println!("cargo:warning=host: libtorch library directory not found; no rpath added");
        return;
    };
    let dir_s = dir.display();
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir_s}");
    compile_dist_shim(&dir);
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{dir_s}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// `nccl.h`'s directory and the CUDA include directory (with `crt/` and `nv/target`), when both
/// are there: `$CUDA_HOME/include` (default /usr/local/cuda) or the pip wheels' own
/// `nvidia/cu13/include` beside torch, which has them once `nvidia-cuda-crt` and
/// `nvidia-cuda-cccl` are installed (tools/requirements.txt).
fn nccl_includes(lib_dir: &std::path::Path) -> Option<Vec<PathBuf>> {
    if !lib_dir.join("libtorch_cuda.so").exists() {
        return None;
    }
    let site = lib_dir.parent()?.parent()?;
    let cuda_home = env_rerun("CUDA_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/local/cuda"));
    let complete = |inc: &PathBuf| ["cuda_runtime.h", "crt/host_config.h", "nv/target"].iter().all(|f| inc.join(f).exists());
    let cuda_inc = [cuda_home.join("include"), site.join("nvidia/cu13/include"), site.join("nvidia/cuda_runtime/include")]
        .into_iter()
        .find(complete)?;
    let nccl = [site.join("nvidia/nccl/include"), cuda_inc.clone(), PathBuf::from("/usr/include")]
        .into_iter()
        .find(|d| d.join("nccl.h").exists())?;
    Some(vec![nccl, cuda_inc])
}

fn compile_dist_shim(lib_dir: &std::path::Path) {
    println!("cargo:rerun-if-changed=csrc");
    let root = lib_dir.parent().map(|p| p.join("include")).unwrap_or_default();
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .file("csrc/dist.cpp")
            .include("csrc/gloo_decl")
            .include(&root)
            .include(root.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .define("GLOG_USE_GLOG_EXPORT", None)
            .define("USE_C10D_GLOO", None)
            .warnings(false);
        b
    };
    let with_nccl = nccl_includes(lib_dir).and_then(|incs| {
        let mut b = base();
        b.includes(&incs).define("USE_C10D_NCCL", None).define("HOST_DIST_NCCL", None);
        match b.try_compile("host_dist") {
            Ok(()) => Some(()),
            Err(e) => {
                println!("cargo:warning=host: the c10d shim does not compile with NCCL ({e}); multi-rank CUDA training will use Gloo");
                None
            }
        }
    });
    if with_nccl.is_none() {
        base().compile("host_dist");
    }
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
