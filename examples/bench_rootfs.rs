//! Benchmark of `--rootfs`: archive build time and size, cold and cached, and `record`'s setup
//! time (from its start to the guest's first instruction) with that archive.
//!
//!     cargo run --release --example bench_rootfs -- ROOTFS [--mem SIZE] [--runs N]
//!
//! ROOTFS is a directory or tarball (about 200 MB for the README's figures). Cold builds use an
//! empty cache directory of their own; cached builds the one a cold build filled. `record` runs
//! the kit's kernel for 0.5 s with `--allow-emulated-kernel` (so it also works on hosts that
//! emulate guest kernel code), first with the archive removed from the real cache, then cached.
//! Files changed in the last two seconds are never cached (see `initramfs::build_with`), so
//! the tree should be left alone for two seconds first.

use dirtytrace::guest::linux::{initramfs, kit};
use dirtytrace::record::{self, RecordOptions};
use dirtytrace::units::{parse_size, HumanDuration, HumanSize};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rootfs = None;
    let (mut mem, mut runs) = (1u64 << 30, 3usize);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--mem" => {
                i += 1;
                mem = parse_size(&args[i])?;
            }
            "--runs" => {
                i += 1;
                runs = args[i].parse()?;
            }
            p => rootfs = Some(PathBuf::from(p)),
        }
        i += 1;
    }
    let rootfs = rootfs.ok_or_else(|| anyhow::anyhow!("usage: bench_rootfs ROOTFS [--mem SIZE] [--runs N]"))?;
    let work = PathBuf::from("target/bench-rootfs");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let script = work.join("w.sh");
    std::fs::write(&script, "#!/bin/sh\ndt-phase bench\nsleep 1\n")?;
    let inputs = initramfs::Inputs {
        busybox: kit::locate_busybox(None)?,
        script: script.clone(),
        contents: initramfs::Contents { rootfs: Some(rootfs.clone()), ..Default::default() },
        disk: None,
    };
    println!("rootfs {}", rootfs.display());
    let mut key = String::new();
    for run in 0..runs {
        let cache = work.join(format!("cache-{run}"));
        let t = Instant::now();
        let cold = initramfs::build_with(&inputs, Some(&cache), &mut |_| {})?;
        let cold_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let cached = initramfs::build_with(&inputs, Some(&cache), &mut |_| {})?;
        let cached_s = t.elapsed().as_secs_f64();
        println!(
            "build  cold {cold_s:.3} s, cached {cached_s:.3} s (from cache: {}): {} bytes, {} unpacked, {} entries",
            cached.cached,
            cold.bytes.len(),
            cold.unpacked_bytes,
            cold.entries
        );
        key = cold.sha256.clone();
        let _ = std::fs::remove_dir_all(&cache);
    }
    for run in 0..runs {
        for label in ["cold", "cached"] {
            if label == "cold" {
                for ext in ["cpio.gz", "json"] {
                    let _ = std::fs::remove_file(kit::cache_dir().join("initramfs").join(format!("{key}.{ext}")));
                }
            }
            let out = work.join(format!("trace-{run}-{label}"));
            let mut o = RecordOptions::new(out.clone());
            o.workload = Some(script.clone());
            o.settings.mem = Some(HumanSize(mem));
            o.settings.duration = Some(HumanDuration(Duration::from_millis(500)));
            o.linux.initramfs.rootfs = Some(rootfs.clone());
            o.linux.boot.allow_emulated_kernel = true;
            let s = record::record(&o, Arc::new(AtomicBool::new(false)), None)?;
            println!("record setup ({label}) {:.3} s", s.setup_s.unwrap_or(f64::NAN));
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
