//! `dirtytrace doctor`: quick, without side effects, and right about this host.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn doctor_says_what_works_here_quickly_and_touches_nothing() {
    let _g = kvm_lock();
    let dir = Scratch::new("doctor");
    let cache = dir.join("cache");
    let t = Instant::now();
    let out = Command::new(bin())
        .current_dir(&dir)
        .env("DIRTYTRACE_CACHE", &cache)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["kvm"]["api_version"], 12);
    assert_eq!(r["kvm"]["read_write"], true);
    assert_eq!(r["synthetic_guest"]["ok"], true);
    let hw = hardware_virtualisation();
    assert_eq!(r["cpu_vmx"].as_bool().unwrap() || r["cpu_svm"].as_bool().unwrap(), hw);
    assert_eq!(r["probe"]["kernel_mode"]["native"], hw, "{r:#}");
    assert_eq!(r["linux_guests"]["ok"], hw, "{r:#}");
    // The QEMU engine, tried for real (.ci/run installs QEMU), and what auto picks.
    assert_eq!(r["qemu"]["ok"], true, "{r:#}");
    assert!(r["qemu"]["why"].as_str().unwrap().contains("the plugin write-protected guest RAM"), "{r:#}");
    assert_eq!(r["auto_engine"]["synthetic"], "kvm");
    assert_eq!(r["auto_engine"]["linux"], if hw { "kvm" } else { "qemu" });
    assert_eq!(r["probe"]["user_mode"]["native"], true);
    let caps: Vec<&str> =
        r["kvm"]["capabilities"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for c in ["KVM_CAP_USER_MEMORY", "KVM_CAP_IRQCHIP", "KVM_CAP_IRQFD", "KVM_CAP_DIRTY_LOG_RING"] {
        assert!(caps.contains(&c), "{caps:?}");
    }
    // The kit is not in this empty cache, and doctor says so without creating anything.
    assert_eq!(r["kit"]["ok"], false);
    assert_eq!(r["disk_images"]["ok"], false);
    assert!(r["kit"]["why"].as_str().unwrap().contains("dirtytrace kit fetch"));
    assert!(!cache.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "doctor wrote into its working directory");
    // The text form carries the verdict.
    let text = Command::new(bin()).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(if hw {
            "Linux guests: yes"
        } else {
            "Linux guests: no (this host's KVM emulates guest kernel code"
        }),
        "{text}"
    );
}

#[test]
fn doctor_without_kvm_exits_non_zero_and_says_why() {
    let dir = Scratch::new("doctor-nokvm");
    let out = Command::new(bin()).env("DIRTYTRACE_KVM_DEVICE", dir.join("no-kvm")).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("missing"), "{text}");
    assert!(text.contains("Synthetic guest: no (") && text.contains("this host has no KVM"), "{text}");
    assert!(text.contains("Linux guests: no"), "{text}");
    assert!(text.contains("--engine auto picks: qemu for the synthetic guest, qemu for Linux guests"), "{text}");
}
