//! Every grid's full expansion, pinned: for the example grids and for grids written here to use
//! every kind of key (synthetic specs and their phase keys, Linux guest and disk keys, record
//! and replay keys, single values and lists on axes, repetitions), the grid as parsed (axes,
//! columns, record and replay settings, Linux inputs), then every run's name, seed, axis values,
//! record settings, spec text (what a sweep writes into `specs/`) and shard, and the
//! fingerprint; and, for bad grids, the whole message. The pinned text,
//! `tests/fixtures/grid-expansion.txt`, was written by the grid code before it edited typed
//! specs: run names, seeds, specs and fingerprints go into every dataset, so none of them may
//! change. A bad grid's message may get better; then the fixture changes with the code.

use dirtytrace::dataset::grid::{Grid, GridError, RunWorkload, Shard, DEFAULT_MAX_RUNS};
use dirtytrace::files::FileError;
use std::fmt::Write;
use std::path::{Path, PathBuf};

const PINNED: &str = include_str!("fixtures/grid-expansion.txt");

/// The files the hand-written grids name, by name (relative to the grid, `/g/grid.toml`).
fn files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("hotcold.toml", include_str!("../examples/workloads/hotcold.toml")),
        ("phases.toml", include_str!("../examples/workloads/phases.toml")),
        ("steady.toml", include_str!("../examples/workloads/steady.toml")),
        ("mig-sequential.toml", include_str!("../examples/qemu_migration/sequential.toml")),
        ("mig-hotcold.toml", include_str!("../examples/qemu_migration/hotcold.toml")),
        ("hello.sh", include_str!("../examples/linux/hello.sh")),
        ("stress-ng.sh", include_str!("../examples/linux/stress-ng.sh")),
        // Numbers where the examples write strings, integers where they write floats, keys in
        // another order, a phase name that needs sanitizing in a run name and a column.
        (
            "numbers.toml",
            "seed = 3\nmem = 67108864\n\n[[phase]]\nrate = \"1MiB/s\"\nworking_set = 8388608\nduration = 2\n\
             name = \"Serve-1\"\ncpu = 1\npattern = \"hotcold\"\nhot_fraction = 0.25\nhot_share = 1\n\n\
             [[phase]]\nname = \"rest\"\nduration = \"500ms\"\nrate = \"0\"\ncpu = 0\n",
        ),
        ("not-utf8.toml", "\u{0}"),
    ]
}

fn parse(text: &str) -> Result<Grid, GridError> {
    let files = files();
    Grid::parse(Path::new("/g/grid.toml"), text, &|p: &Path| {
        let name = p.to_str().unwrap_or("");
        match files.iter().find(|(n, _)| *n == name) {
            Some((_, data)) => Ok((Path::new("/g").join(p), data.as_bytes().to_vec())),
            None => {
                Err(FileError::Io { path: p.to_path_buf(), source: std::io::Error::from(std::io::ErrorKind::NotFound) })
            }
        }
    })
}

/// The grids that expand, each with a title.
fn good_grids() -> Vec<(&'static str, String)> {
    let s = |t: &str| t.to_string();
    vec![
        ("built-in spec, no axes", s("")),
        (
            "built-in spec, every synthetic key",
            s("[record]\nmem = \"2GiB\"\nvcpus = 2\n[axes]\n\"sequential.rate\" = [\"8MiB/s\", \"max\", \"1Gbit/s\"]\n\
               \"hotcold.pattern\" = [\"hotcold\", \"random\"]\n\"hotcold.hot_fraction\" = 0.2\n\
               \"hotcold.hot_share\" = [0.5, 1]\n\"idle.duration\" = \"1.5s\"\n\"sequential.cpu\" = [1, 0.25]\n\
               \"hotcold.working_set\" = \"64MiB\"\n"),
        ),
        (
            "mem and vcpus axes, record keys",
            s("workload = \"hotcold.toml\"\n[record]\ninterval = \"20ms\"\nduration = \"5s\"\nmigration_speed = \"10Gbit/s\"\n\
               exact_cut = true\n[axes]\nvcpus = [1, 4]\nmem = [\"1GiB\", \"3GiB\"]\ninterval = [\"1ms\", \"250ms\"]\n\
               migration_speed = [\"1Gbit/s\", \"500MB/s\"]\nduration = \"3s\"\nrepeat = 2\n"),
        ),
        (
            "a spec of numbers",
            s("workload = \"numbers.toml\"\n[axes]\n\"Serve-1.hot_fraction\" = [0.1, 0.5]\n\"rest.duration\" = [1, \"2s\"]\n\
               \"Serve-1.rate\" = [\"1MiB/s\", \"2.5MB/s\"]\nmem = [67108864, \"128MiB\"]\ninterval = 1\n\"Serve-1.working_set\" = [4194304, \"6MiB\"]\n"),
        ),
        (
            "every example spec as a base",
            s("workload = \"phases.toml\"\n[axes]\n\"shuffle.pattern\" = [\"sequential\", \"random\", \"hotcold\"]\n\
               \"shuffle.hot_share\" = [0.7]\n\"compute.cpu\" = [0.5]\n"),
        ),
        ("steady", s("workload = \"steady.toml\"\n[axes]\nrate = [\"50MiB/s\", \"max\"]\nworking_set = [\"128MiB\"]\n")),
        ("migration sequential", s("workload = \"mig-sequential.toml\"\n[axes]\n\"steady.rate\" = [\"25MiB/s\"]\n")),
        ("migration hotcold", s("workload = \"mig-hotcold.toml\"\n[axes]\nrepeat = 3\n")),
        (
            "inline spec, replay keys",
            s("[spec]\nseed = 5\nvcpus = 2\n[[spec.phase]]\nname = \"w\"\nduration = \"1s\"\nworking_set = \"8MiB\"\n\
               rate = \"16MiB/s\"\npattern = \"random\"\n[record]\nmem = \"64MiB\"\n[axes]\nrate = [\"1MiB/s\", \"2MiB/s\"]\n\
               [replay]\nbandwidths = [\"1Gbit/s\", \"64MiB/s\", \"1MB/s\"]\nmax_downtime = \"50ms\"\nmax_rounds = 5\n\
               loop = true\nzero_pages = \"skip\"\nstart = \"1s\"\n"),
        ),
        (
            "Linux script, every Linux key",
            s("workload = \"stress-ng.sh\"\n[record]\ninterval = \"20ms\"\nduration = \"2s\"\nmigration_speed = \"1Gbit/s\"\n\
               mem = \"1GiB\"\nvcpus = 2\nexact_cut = true\nengine = \"qemu\"\nclock = \"guest\"\nkernel = \"k/bzImage\"\n\
               files = [\"b:/usr/bin/b\", \"/abs/c:/c\"]\ncmdline = \"quiet\"\nbzimage = true\nrootfs = \"r.tar\"\n\
               packages = [\"stress-ng\", \"libc6\"]\nbusybox = \"bb/busybox\"\nallow_emulated_kernel = true\n\
               [axes]\nvcpus = [1, 2]\nmem = [\"512MiB\", \"1GiB\"]\ninterval = [\"10ms\", \"100ms\"]\n\
               [replay]\nbandwidths = [\"1Gbit/s\"]\n"),
        ),
        (
            "Linux script, disk keys",
            s("workload = \"hello.sh\"\n[record]\ndisk = \"img/debian.qcow2\"\ndisk_format = \"qcow2\"\n\
               disk_root = \"/dev/vda1\"\nengine = \"kvm\"\n[axes]\nduration = [\"1s\", \"2s\"]\n\
               migration_speed = \"1Gbit/s\"\n"),
        ),
        ("Linux script, no axes", s("workload = \"hello.sh\"\n")),
        (
            "names cut and hashed",
            s("[spec]\nmem = \"64MiB\"\n[[spec.phase]]\nname = \"a-phase-with-a-rather-long-name-that-goes-on-and-on-and-on\"\n\
               duration = \"1s\"\nworking_set = \"8MiB\"\nrate = \"1MiB/s\"\npattern = \"hotcold\"\n[[spec.phase]]\n\
               name = \"another-phase-with-a-long-name-that-also-goes-on-for-quite-a-while\"\nduration = \"1s\"\n\
               working_set = \"8MiB\"\nrate = \"1MiB/s\"\n[axes]\n\
               \"a-phase-with-a-rather-long-name-that-goes-on-and-on-and-on.hot_fraction\" = [0.125, 0.25]\n\
               \"another-phase-with-a-long-name-that-also-goes-on-for-quite-a-while.working_set\" = [\"1MiB\", \"2MiB\"]\n\
               \"a-phase-with-a-rather-long-name-that-goes-on-and-on-and-on.rate\" = [\"1MiB/s\", \"1000000B/s\"]\n"),
        ),
    ]
}

/// Grids that are refused, and keys whose values have the wrong type.
fn bad_grids() -> Vec<String> {
    let w = "workload = \"steady.toml\"\n";
    let l = "workload = \"hello.sh\"\n";
    let mut v: Vec<String> = [
        "bogus = 1\n",
        "workload = 3\n",
        "workload = \"x.txt\"\n",
        "workload = \"missing.toml\"\n",
        "workload = \"not-utf8.toml\"\n",
        "spec = 3\n",
        "workload = \"steady.toml\"\n[spec]\nmem = \"1GiB\"\n",
        "[spec]\nmem = \"1GiB\"\n",
        "[spec]\nmem = \"1GiB\"\n[[spec.phase]]\nname = \"a\"\nduration = \"1s\"\nrate = \"0\"\n[[spec.phase]]\nname = \"a\"\n\
         duration = \"1s\"\nrate = \"0\"\n",
        "record = 3\n",
        "axes = [1]\n",
        "replay = \"x\"\n",
        "[axes]\nrate = [\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for body in [
        "[axes]\nspeed = [1]\n",
        "[axes]\nrate = []\n",
        "[axes]\nrepeat = 0\n",
        "[axes]\nrepeat = 1000001\n",
        "[axes]\nrepeat = \"2\"\n",
        "[axes]\nrepeat = 2.0\n",
        "[axes]\n\"steady.interval\" = [\"1s\"]\n",
        "[axes]\n\"nope.rate\" = [\"1MiB/s\"]\n",
        "[axes]\nhot_fraction = [0.1]\n",
        "[axes]\nrate = [\"1MiB/s\", \"1048576B/s\"]\n",
        "[axes]\nrate = [\"fast\"]\n",
        "[axes]\nrate = [true]\n",
        "[axes]\nrate = [\"1MiB/s\", 3.5, [1]]\n",
        "[axes]\nworking_set = [\"2GiB\"]\n",
        "[axes]\nworking_set = [true]\n",
        "[axes]\nmem = [true]\n",
        "[axes]\nmem = [\"lots\"]\n",
        "[axes]\nmem = [\"3MiB\"]\n",
        "[axes]\nvcpus = [0]\n",
        "[axes]\nvcpus = [65]\n",
        "[axes]\nvcpus = [\"2\"]\n",
        "[axes]\nvcpus = [1.5]\n",
        "[axes]\npattern = [3]\n",
        "[axes]\npattern = [\"zigzag\"]\n",
        "[axes]\npattern = [\"Random\"]\n",
        "[axes]\ncpu = [\"half\"]\n",
        "[axes]\ncpu = [1.5]\n",
        "[axes]\ncpu = [2]\n",
        "[axes]\ncpu = [true]\n",
        "[axes]\nhot_share = [\"0.5\"]\n",
        "[axes]\npattern = [\"hotcold\"]\nhot_fraction = [0]\n",
        "[axes]\n\"steady.duration\" = [true]\n",
        "[axes]\n\"steady.duration\" = [\"0s\"]\n",
        "[axes]\ninterval = true\n",
        "[axes]\ninterval = [true]\n",
        "[axes]\ninterval = [\"0.5ms\"]\n",
        "[axes]\ninterval = [\"2h\"]\n",
        "[axes]\nduration = [\"0s\"]\n",
        "[axes]\nduration = [{ a = 1 }]\n",
        "[axes]\nmigration_speed = [\"0B/s\"]\n",
        "[axes]\nmigration_speed = [false]\n",
        "[axes]\ninterval = [\"10ms\"]\n\"steady.duration\" = [\"10ms\"]\n",
        "[record]\ninterval = true\n",
        "[record]\ninterval = \"2h\"\n",
        "[record]\nduration = \"0s\"\n",
        "[record]\nmigration_speed = [1]\n",
        "[record]\nmem = true\n",
        "[record]\nmem = \"3MiB\"\n",
        "[record]\nvcpus = \"two\"\n",
        "[record]\nvcpus = 0\n",
        "[record]\nvcpus = 65\n",
        "[record]\nexact_cut = \"yes\"\n",
        "[record]\nengine = \"xen\"\n",
        "[record]\nkernel = \"k\"\n",
        "[record]\ndisk = \"d.img\"\n",
        "[record]\nbogus = 1\n",
        "[replay]\nbandwidths = []\n",
        "[replay]\nbandwidths = \"1Gbit/s\"\n",
        "[replay]\nbandwidths = [true]\n",
        "[replay]\nbandwidths = [\"1Gbit/s\", \"125MB/s\"]\n",
        "[replay]\nmax_rounds = 0\n",
        "[replay]\nmax_rounds = \"5\"\n",
        "[replay]\nloop = 1\n",
        "[replay]\nzero_pages = \"drop\"\n",
        "[replay]\nstart = true\n",
        "[replay]\nstart = \"soon\"\n",
        "[replay]\nmax_downtime = true\n",
        "[replay]\nbogus = 1\n",
    ] {
        v.push(format!("{w}{body}"));
    }
    for body in [
        "[axes]\nrate = [\"1MiB/s\"]\n",
        "[axes]\n\"w.rate\" = [\"1MiB/s\"]\n",
        "[axes]\nvcpus = [65]\n",
        "[record]\npackages = [\"stress-ng\", \"-oAPT::X=1\"]\n",
        "[record]\nkernel = 3\n",
        "[record]\nfiles = \"a:/b\"\n",
        "[record]\nbzimage = \"yes\"\n",
        "[record]\ndisk_format = \"vmdk\"\n",
        "[record]\nvcpus = 65\n",
    ] {
        v.push(format!("{l}{body}"));
    }
    v
}

fn render_grid(out: &mut String, g: &Grid) {
    let runs = match g.expand(DEFAULT_MAX_RUNS) {
        Ok(runs) => runs,
        Err(e) => {
            writeln!(out, "expand: error: {e}").unwrap();
            return;
        }
    };
    // The runs generated one at a time are the runs expanded, and so is their fingerprint.
    let one_by_one: Vec<_> = g.runs(DEFAULT_MAX_RUNS).unwrap().map(Result::unwrap).collect();
    assert_eq!(one_by_one, runs);
    let mut f = g.fingerprinter();
    runs.iter().for_each(|r| f.feed(r));
    let fingerprint = g.fingerprint(&runs);
    assert_eq!(f.finish(), fingerprint);
    writeln!(out, "workload: {:?}", g.workload).unwrap();
    writeln!(out, "record: {}", serde_json::to_string(&g.record).unwrap()).unwrap();
    writeln!(out, "linux: {}", serde_json::to_string(&g.linux).unwrap()).unwrap();
    writeln!(out, "replay: {}", serde_json::to_string(&g.replay).unwrap()).unwrap();
    writeln!(out, "repeat: {}", g.repeat).unwrap();
    for a in &g.axes {
        let values: Vec<String> = a.values.iter().map(|v| format!("{} ({})", v.text(), v.column_value())).collect();
        writeln!(
            out,
            "axis {:?} on {:?} phase {:?}: column {} {:?}: {}",
            a.label,
            a.key,
            a.phase,
            a.column,
            a.kind(),
            values.join(", ")
        )
        .unwrap();
    }
    writeln!(out, "fingerprint: {fingerprint}").unwrap();
    writeln!(out, "runs: {}", runs.len()).unwrap();
    for r in &runs {
        let shard = (1..=3u32).find(|&i| Shard { index: i, count: 3 }.contains(r.run)).unwrap();
        let values: Vec<String> = r.values.iter().map(|v| v.text()).collect();
        writeln!(out, "run {} `{}`: repeat {}, seed {:?}, shard {shard}/3", r.run, r.name, r.repeat, r.seed).unwrap();
        writeln!(out, "  values: {}", values.join(" | ")).unwrap();
        writeln!(out, "  record: {}", serde_json::to_string(&r.record).unwrap()).unwrap();
        match &r.workload {
            RunWorkload::Synthetic { spec } => {
                writeln!(out, "  spec:").unwrap();
                for line in spec.lines() {
                    writeln!(out, "  | {line}").unwrap();
                }
            }
            RunWorkload::Linux { script } => writeln!(out, "  script: {}", script.display()).unwrap(),
        }
    }
}

fn render() -> String {
    let mut out = String::new();
    // The example grids, read from the repository as `sweep` reads them.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("examples/sweeps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    for example in examples {
        writeln!(out, "=== {}", example.strip_prefix(&root).unwrap().display()).unwrap();
        match Grid::load(&example) {
            Ok(g) => render_grid(&mut out, &g),
            Err(e) => writeln!(out, "error: {e}").unwrap(),
        }
    }
    for (title, text) in good_grids() {
        writeln!(out, "=== {title}").unwrap();
        match parse(&text) {
            Ok(g) => render_grid(&mut out, &g),
            Err(e) => writeln!(out, "error: {e}").unwrap(),
        }
    }
    for text in bad_grids() {
        writeln!(out, "=== bad: {text:?}").unwrap();
        match parse(&text).and_then(|g| g.expand(DEFAULT_MAX_RUNS).map(|_| g)) {
            Ok(_) => writeln!(out, "accepted").unwrap(),
            Err(e) => writeln!(out, "error: {e}").unwrap(),
        }
    }
    out
}

/// `DIRTYTRACE_WRITE_PINS=1` writes the fixture instead: only ever for a change of a bad grid's
/// message, which the fixture's diff then shows.
#[test]
fn every_grid_expands_as_pinned() {
    let got = render();
    if std::env::var_os("DIRTYTRACE_WRITE_PINS").is_some() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grid-expansion.txt");
        std::fs::write(path, &got).unwrap();
        return;
    }
    for (i, (want, got)) in PINNED.lines().zip(got.lines()).enumerate() {
        assert_eq!(got, want, "line {} of tests/fixtures/grid-expansion.txt", i + 1);
    }
    assert_eq!(got.lines().count(), PINNED.lines().count(), "lines in tests/fixtures/grid-expansion.txt");
    assert_eq!(got, PINNED);
}
