//! Bad input gets a clear error, names what is wrong, and leaves no output behind.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const PHASE: &str = "[[phase]]\nduration = \"1s\"\nworking_set = \"1MiB\"\n";

#[test]
fn bad_specs_name_the_key() {
    let dir = Scratch::new("bad-spec");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let cases: &[(&str, String, &[&str])] = &[
        ("bad-key.toml", format!("{PHASE}rate = \"1MiB/s\"\nspeed = 3\n"), &["unknown field", "speed"]),
        ("neg-rate.toml", format!("{PHASE}rate = \"-5MiB/s\"\n"), &["phase[0].rate", "negative"]),
        ("nan-rate.toml", format!("{PHASE}rate = \"lots\"\n"), &["phase[0].rate", "lots"]),
        (
            "big-ws.toml",
            "mem = \"64MiB\"\n[[phase]]\nduration = \"1s\"\nworking_set = \"1GiB\"\nrate = \"max\"\n".into(),
            &["phase[0].working_set", "larger than"],
        ),
        ("not-toml.toml", "this is [ not toml".into(), &["not-toml.toml"]),
    ];
    for (name, text, needles) in cases {
        let spec = write(&dir, name, text);
        assert_fails(&["record", "--workload", spec.to_str().unwrap(), "--output", o], &[], needles, &[&out]);
    }
    assert_fails(
        &["record", "--workload", dir.join("absent.toml").to_str().unwrap(), "--output", o],
        &[],
        &["absent.toml"],
        &[&out],
    );
}

#[test]
fn bad_flags() {
    let dir = Scratch::new("bad-flags");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    assert_fails(&["record", "--interval", "0", "--output", o], &[], &["--interval", "at least 1ms"], &[&out]);
    assert_fails(&["record", "--interval", "500us", "--output", o], &[], &["--interval"], &[&out]);
    assert_fails(&["record", "--interval", "soon", "--output", o], &[], &["--interval"], &[&out]);
    assert_fails(&["record", "--mem=-1GiB", "--output", o], &[], &["--mem", "negative"], &[&out]);
    assert_fails(&["record", "--migration-speed", "0", "--output", o], &[], &["--migration-speed"], &[&out]);
}

#[test]
fn unwritable_output_directory() {
    let _g = kvm_lock();
    let target = "/proc/dirtytrace-cannot-create-this";
    assert_fails(
        &["record", "--output", target],
        &[],
        &["cannot create output directory", target],
        &[Path::new(target)],
    );
    // A non-empty directory is never overwritten.
    let dir = Scratch::new("nonempty");
    write(&dir, "precious.txt", "keep me");
    let Run { code, stderr, .. } = cli(&["record", "--output", dir.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert_eq!(std::fs::read_to_string(dir.join("precious.txt")).unwrap(), "keep me");
}

#[test]
fn missing_or_unusable_kvm() {
    let dir = Scratch::new("nokvm");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let missing = dir.join("no-such-kvm");
    assert_fails(
        &["record", "--engine", "kvm", "--output", o],
        &[("DIRTYTRACE_KVM_DEVICE", missing.to_str().unwrap())],
        &["does not exist", "no KVM"],
        &[&out],
    );
    let args = ["record", "--engine", "kvm", "--output", o, "--kvm-device", missing.to_str().unwrap()];
    assert_fails(&args, &[], &["does not exist"], &[&out]);
    let not_kvm = write(&dir, "not-kvm", "");
    assert_fails(
        &["record", "--engine", "kvm", "--output", o, "--kvm-device", not_kvm.to_str().unwrap()],
        &[],
        &["cannot use", "not a KVM device"],
        &[&out],
    );
    // Permission denied: a device node only root may open, opened as `nobody`, with an output
    // directory `nobody` could create.
    use std::os::unix::fs::PermissionsExt;
    let open = Scratch::new("nokvm-nobody");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let nobody_out = open.join("out");
    let mut as_nobody = Command::new("setpriv"); // util-linux's
    as_nobody.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(bin());
    let args = ["record", "--engine", "kvm", "--output", nobody_out.to_str().unwrap(), "--kvm-device", "/dev/kvm"];
    let Run { code, stderr, .. } = run_command(as_nobody, &args, &[]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("permission denied") && stderr.contains("kvm"), "{stderr}");
    assert!(!nobody_out.exists());
}

/// A full disk stops the recording with a clear error; every interval already in the journal
/// survives, and `recover` rebuilds the trace once there is room again.
#[test]
fn full_disk_keeps_what_was_harvested() {
    let _g = kvm_lock();
    let dir = Scratch::new("fulldisk");
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = |args: &[&str]| {
        let st = Command::new("mount").args(args).status().expect("mount runs");
        assert!(st.success(), "mount {args:?} failed: these tests run as root, as CI does");
    };
    mount(&["-t", "tmpfs", "-o", "size=600k", "tmpfs", mnt.to_str().unwrap()]);
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let spec = write(
        &dir,
        "w.toml",
        "mem = \"1GiB\"\nseed = 1\n[[phase]]\nduration = \"30s\"\nworking_set = \"512MiB\"\nrate = \"40MiB/s\"\npattern = \"random\"\n",
    );
    let out = mnt.join("trace");
    let Run { code, stderr, .. } =
        cli(&["record", "--workload", spec.to_str().unwrap(), "--interval", "20ms", "--output", out.to_str().unwrap()]);
    mount(&["-o", "remount,size=64m", mnt.to_str().unwrap()]);
    let recovered = Command::new(bin()).args(["recover", out.to_str().unwrap()]).status().unwrap();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("No space left on device") && stderr.contains("dirtytrace recover"), "{stderr}");
    assert!(recovered.success());
    let trace = dirtytrace::trace::Trace::open(&out).unwrap();
    assert_eq!(trace.manifest.status, dirtytrace::trace::TraceStatus::Recovered);
    let rows = trace.rates().unwrap();
    assert!(rows.len() > 100, "{} intervals kept", rows.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.interval, i as u64);
    }
    for c in dirtytrace::guest::synthetic::verify::verify(&trace).unwrap() {
        assert_eq!((c.missing, c.unexpected), (0, 0), "{c:?}");
    }
}

/// Issue 15, defect 11b: `--vcpus -1` is refused as a value of --vcpus, not as an unknown argument.
#[test]
fn negative_vcpus_are_refused_as_a_value() {
    for v in ["-1", "0", "x"] {
        let out = std::process::Command::new(common::bin()).args(["record", "--vcpus", v]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{v}: {err}");
        assert!(err.contains(&format!("invalid value '{v}' for '--vcpus")) && err.contains("at least 1"), "{v}: {err}");
        assert!(!err.contains("unexpected argument"), "{err}");
    }
}

/// Issue 15: a migration speed or bandwidth too small to mean anything (`1e-300B/s`, whose
/// working-set window, RAM over speed, is infinite) is refused while the command line is parsed,
/// with the flag and the accepted range named; it once reached the manifest's check
/// ("`working_set_window_s` is inf"). A grid's keys take the same range.
#[test]
fn extreme_speeds_are_refused_at_the_flag_with_the_range() {
    let dir = Scratch::new("extreme-speeds");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let t = dir.join("no-trace");
    let t = t.to_str().unwrap();
    for (v, shown) in
        [("1e-300B/s", "1e-300"), ("5e-324B/s", "5e-324"), ("1e-300bit/s", "1.25e-301"), ("0.5B/s", "0.5")]
    {
        for (args, flag) in [
            (vec!["record", "--migration-speed", v, "--output", o], "--migration-speed <MIGRATION_SPEED>"),
            (vec!["simgrid", t, "--migration-speed", v], "--migration-speed <MIGRATION_SPEED>"),
            (vec!["replay", t, "--bandwidth", v], "--bandwidth <BANDWIDTH>"),
        ] {
            let Run { code, stderr, .. } = cli(&args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert_eq!(
                stderr.lines().next().unwrap(),
                format!("error: invalid value '{v}' for '{flag}': must be from 1 B/s to 1 PB/s, got {shown} B/s"),
                "{args:?}"
            );
            assert!(!out.exists());
        }
    }
    // The smallest and largest accepted pass the flag (and fail later, at the missing trace).
    for v in ["1B/s", "1000TB/s"] {
        let Run { code, stderr, .. } = cli(&["simgrid", t, "--migration-speed", v]);
        assert_eq!(code, Some(1), "{v}: {stderr}");
        assert!(stderr.contains("no-trace") && !stderr.contains("--migration-speed"), "{v}: {stderr}");
    }
    // A grid: `axes.migration_speed`, `record.migration_speed`, `replay.bandwidths`.
    write(&dir, "w.toml", "mem = \"64MiB\"\n[[phase]]\nduration = \"1s\"\nworking_set = \"1MiB\"\nrate = \"1MiB/s\"\n");
    for (body, key) in [
        ("[axes]\nmigration_speed = [\"1e-300B/s\"]\n", "axes.migration_speed"),
        ("[record]\nmigration_speed = \"1e-300B/s\"\n", "record.migration_speed"),
        ("[replay]\nbandwidths = [\"1e-300B/s\"]\n", "replay.bandwidths"),
    ] {
        let g = write(&dir, "g.toml", &format!("workload = \"w.toml\"\n{body}"));
        let Run { code, stderr, .. } = cli(&["sweep", g.to_str().unwrap(), "--output", o, "--dry-run"]);
        assert_eq!(code, Some(1), "{key}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!("error: {}: `{key}`: must be from 1 B/s to 1 PB/s, got 1e-300 B/s", g.display()),
        );
        assert!(!out.exists());
    }
}
