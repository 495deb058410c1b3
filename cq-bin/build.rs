//! Links the unwinder into `cq_client` statically, the way `gcc -static-libgcc` does.
//!
//! `cq_client` starts once per job, so its start-up is part of every job's cost. A Rust
//! program on glibc loads `libgcc_s.so.1` only for its unwinder, and that library's
//! constructor (`__cpu_indicator_init`) probes the CPU with a series of `cpuid`
//! instructions, each of which traps to the hypervisor in a virtual machine: a tenth of
//! `cq_client`'s start-up CPU time on the VMs measured (README, Performance). With the
//! unwinder's archive linked whole, nothing is left for `libgcc_s.so.1` to provide and the
//! linker (`--as-needed`, rustc's default) no longer records it. Panics still unwind and
//! backtraces still work: the code is the same, only where it is loaded from changes.
//!
//! Applied only where it can be: a native (not cross) build for a GNU/Linux target whose C
//! compiler has `libgcc_eh.a`, and not with `crt-static`, where the standard library links
//! that archive itself.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let static_crt = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    // Cross-compiling, `cc` would name the build machine's archive, not the target's.
    let native = var("HOST") == var("TARGET");
    if !native
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || static_crt
    {
        return;
    }
    let Some(archive) = unwinder_archive() else {
        println!(
            "cargo:warning=libgcc_eh.a not found: cq_client loads libgcc_s.so.1 (slower start)"
        );
        return;
    };
    for arg in [
        "-Wl,--whole-archive".to_owned(),
        archive.display().to_string(),
        "-Wl,--no-whole-archive".to_owned(),
    ] {
        println!("cargo:rustc-link-arg-bin=cq_client={arg}");
    }
    // For the test that checks the result.
    println!("cargo:rustc-env=CQ_CLIENT_STATIC_UNWINDER=1");
}

/// The C compiler's `libgcc_eh.a`, if it has one (`cc -print-file-name` echoes the bare
/// name when it has not).
fn unwinder_archive() -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_absolute() && path.is_file()).then_some(path)
}
