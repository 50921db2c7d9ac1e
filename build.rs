//! Builds dirtytrace's QEMU plugin (the `qemu-plugin` crate, which has no dependencies) with
//! the same rustc, so that the binary embeds it: `cargo install` then needs no extra step,
//! and the plugin always matches the recorder that loads it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from("qemu-plugin/src");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("dirtytrace_qemu_plugin.so");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "cdylib", "--crate-name", "dirtytrace_qemu_plugin"])
        .args(["-C", "opt-level=2", "-C", "panic=abort", "-C", "strip=symbols"])
        .arg("-o")
        .arg(&out)
        .arg(src.join("lib.rs"))
        .status()
        .expect("cannot run rustc to build the QEMU plugin");
    assert!(status.success(), "building the QEMU plugin (qemu-plugin/src/lib.rs) failed");
}
