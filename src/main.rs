//! The command line: parse, then hand over to the library.

use clap::{Args, Parser, Subcommand, ValueEnum};
use dirtytrace::analysis::simgrid::start;
use dirtytrace::analysis::{plot, replay, simgrid, summary};
use dirtytrace::guest::linux::{initramfs, kit, LinuxInputs};
use dirtytrace::units::{HumanDuration, HumanRate, HumanSize, MIB};
use dirtytrace::{bench, dataset, record, report, trace};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dirtytrace",
    version,
    about = "Record how fast a VM dirties its memory, as datasets for live-migration simulators"
)]
#[command(long_about = "Record how fast a VM dirties its memory, as datasets for live-migration simulators.\n\n\
`dirtytrace record` boots a guest, samples its dirty log on a drift-free clock and writes a \
trace directory: a Parquet table of per-interval rates (with SimGrid's live-migration parameters) and \
compressed per-interval dirty bitmaps. The guest runs under dirtytrace's own VMM on KVM (read-write \
/dev/kvm: root, or the kvm group), or, for Linux workloads on hosts without VT-x/AMD-V, under QEMU's \
TCG emulator with dirtytrace's plugin (--engine; `dirtytrace doctor` says what runs here).\n\n\
`summarize`, `simgrid`, `replay` and `plot` turn a trace into numbers, SimGrid parameters, \
trace-driven precopy migrations and figures; the files themselves load in pandas, polars, DuckDB \
or Spark (schemas/).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a guest and record its dirty pages into a trace directory.
    #[command(
        after_help = "Examples:\n  dirtytrace record                                  # built-in synthetic workload, 9 s\n  \
dirtytrace record --workload examples/workloads/steady.toml --interval 10ms\n  \
dirtytrace record --duration 30s --mem 4GiB --output traces/run1\n  \
dirtytrace kit fetch && dirtytrace record --workload examples/linux/hello.sh --vcpus 2 --console\n\n\
Sizes read as 64MiB, 2GiB, 125MB; durations as 250ms, 1.5s, 2min; rates as 1Gbit/s, 125MB/s.\n\
Ctrl-C stops the recording and keeps a complete trace; the exit code is then 130."
    )]
    Record(Box<RecordArgs>),
    /// Replay an execution kept in a trace (`record --clock guest --keep-execution`) and record
    /// it again, at another interval or migration speed: the same instructions, the same pages.
    #[command(
        after_help = "Example:\n  dirtytrace record --workload run.sh --clock guest --keep-execution -o t100\n  \
dirtytrace retrace t100 --interval 10ms -o t10"
    )]
    Retrace(RetraceArgs),
    /// Measure the recorder: harvest cost, deadlines, guest slowdown, compression.
    Bench(BenchArgs),
    /// The guest kernel kit for Linux workloads.
    #[command(subcommand)]
    Kit(KitCommand),
    /// VM disk images for `record --disk`.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Write the initramfs `record` would boot for a .sh workload, to inspect or boot elsewhere.
    Initramfs(InitramfsArgs),
    /// Say what will work on this host: KVM, whether guest kernel code runs natively, extras.
    Doctor {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Finalise a trace whose recorder was killed, from its journal.
    Recover {
        /// The trace directory.
        trace: PathBuf,
    },
    #[command(flatten)]
    Analysis(AnalysisCommand),
    /// Record a parameter grid into a dataset: one trace per run, resumable and shardable.
    #[command(after_help = SWEEP_HELP)]
    Sweep(SweepArgs),
    /// Rebuild a dataset's index.parquet and replay.parquet from the traces it holds (merges shards).
    Index(IndexArgs),
}

const SWEEP_HELP: &str = "Examples:\n  dirtytrace sweep examples/sweeps/grid.toml --output ds --dry-run\n  \
dirtytrace sweep examples/sweeps/grid.toml --output ds\n  \
dirtytrace sweep grid.toml --output /shared/ds --shard 3/8      # host 3 of 8 (examples/sweeps/slurm.sh)\n\n\
The grid, the run names and the index are documented in schemas/dataset.md. Running the same command again \
resumes: finished traces are skipped, killed ones recovered, interrupted ones recorded again. Ctrl-C stops after \
finalising the current trace (exit code 130). Sweeps and shards may write into one dataset at once: each run is \
claimed by one sweep, and the others leave it to that one.\n\n\
--jobs: recordings share the CPUs, so concurrent ones harvest later and their guests run slower; keep 1 \
(the default) for timing-faithful traces, and check missed_deadlines in the index if you raise it.";

#[derive(Args)]
struct SweepArgs {
    /// The grid: a base workload, [record] options, [axes] and [replay] (schemas/dataset.md).
    grid: PathBuf,
    /// The dataset directory: new, empty, or a dataset of the same grid (to resume or add a shard).
    #[arg(long, short)]
    output: PathBuf,
    /// Record only shard I of N: the runs whose position k has k mod N = I - 1.
    #[arg(long, value_name = "I/N", default_value = "1/1")]
    shard: dataset::grid::Shard,
    /// Recordings at once, at most one per CPU (see below).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    jobs: usize,
    /// Refuse a grid that expands to more runs than this.
    #[arg(long, default_value_t = dataset::grid::DEFAULT_MAX_RUNS, allow_hyphen_values = true)]
    max_runs: usize,
    /// List the shard's runs and what their directories hold; record nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON on stdout: the runs (--dry-run) or how each went.
    #[arg(long)]
    json: bool,
    /// The KVM device (default /dev/kvm, or $DIRTYTRACE_KVM_DEVICE).
    #[arg(long, value_name = "PATH")]
    kvm_device: Option<PathBuf>,
}

#[derive(Args)]
struct IndexArgs {
    /// The dataset directory.
    dataset: PathBuf,
    /// Analyse every trace again, rather than keep the rows of unchanged traces.
    #[arg(long)]
    rebuild: bool,
    /// Print what was done as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn run_sweep(a: SweepArgs) -> anyhow::Result<ExitCode> {
    use dataset::sweep;
    let mut opts = sweep::SweepOptions::new(a.grid, a.output);
    opts.shard = a.shard;
    opts.jobs = a.jobs;
    opts.max_runs = a.max_runs;
    opts.kvm_device = a.kvm_device;
    if a.dry_run {
        sweep::dry_run(&opts, a.json, &mut std::io::BufWriter::new(std::io::stdout().lock()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let plan = sweep::plan(opts)?;
    let observer = dataset::progress::ConsoleObserver::new(std::io::stderr().is_terminal());
    let report = sweep::run(&plan, interrupt_flag(), &observer);
    observer.finish();
    let report = report?;
    if a.json {
        print!("{}", json(&report)?);
    }
    eprint!("{}", sweep::render_report(&report));
    Ok(if report.interrupted {
        ExitCode::from(130)
    } else if report.failed > 0 || report.index_error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn run_index(a: IndexArgs) -> anyhow::Result<ExitCode> {
    let r = dataset::index::update(&a.dataset, a.rebuild)?;
    if a.json {
        print!("{}", json(&r)?);
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "index: {} traces ({} analysed, {} unchanged) in {}; {} replay rows in {}; {:.2} s",
        r.traces,
        r.analysed,
        r.reused,
        r.index.display(),
        r.replay_rows,
        r.replay.display(),
        r.seconds
    );
    Ok(ExitCode::SUCCESS)
}

/// The offline tools: each reads a finished trace.
#[derive(Subcommand)]
enum AnalysisCommand {
    /// Summarize a trace: rates, CPU, distinct pages, working-set curve, hottest pages, phases.
    Summarize(SummarizeArgs),
    /// Fit SimGrid's live-migration parameters (schemas/analysis.md) to a trace.
    Simgrid(SimgridArgs),
    /// Replay a precopy live migration over the trace's exact dirty pages.
    Replay(ReplayArgs),
    /// Draw a trace: dirty rate with phases, page-by-time heatmap, working-set curve.
    Plot(PlotArgs),
}

#[derive(Args)]
struct SummarizeArgs {
    /// Trace directories or datasets (a dataset stands for every trace under its traces/).
    #[arg(required = true, value_name = "TRACE")]
    traces: Vec<PathBuf>,
    /// Only the intervals of this phase.
    #[arg(long)]
    phase: Option<String>,
    /// How many of the hottest pages to list.
    #[arg(long, default_value_t = summary::DEFAULT_TOP_PAGES)]
    top: usize,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// How `simgrid` prints the parameters.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SimgridFormat {
    /// For people.
    Human,
    /// JSON on stdout.
    Json,
    /// A C function calling the sg_vm_set_* setters.
    C,
    /// The same for C++ (s4u).
    Cpp,
}

#[derive(Args)]
struct SimgridArgs {
    /// Trace directories or datasets (a dataset stands for every trace under its traces/).
    #[arg(required = true, value_name = "TRACE")]
    traces: Vec<PathBuf>,
    /// Migration speed (bytes/s or bits/s). Default: the one the trace was recorded with.
    #[arg(long, allow_hyphen_values = true, value_parser = dirtytrace::units::parse_speed)]
    migration_speed: Option<HumanRate>,
    /// Fit to the intervals of this phase only.
    #[arg(long)]
    phase: Option<String>,
    /// Fit to one precopy migration starting at this trace time, as `replay --start T
    /// --zero-pages skip --max-downtime 30ms` runs it at the migration speed: for migration
    /// studies. Without it, the whole trace's rates: for characterising the workload.
    #[arg(long, conflicts_with = "phase", allow_hyphen_values = true)]
    start: Option<HumanDuration>,
    /// With --start: repeat the trace when the migration outlasts it, as `replay --loop`.
    #[arg(long = "loop", requires = "start")]
    looped: bool,
    /// With --start: replay's round limit (round 0 included), as `replay --max-rounds`.
    #[arg(long, requires = "start", default_value_t = replay::DEFAULT_MAX_ROUNDS, allow_hyphen_values = true)]
    max_rounds: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SimgridFormat::Human)]
    format: SimgridFormat,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// Trace directories or datasets (a dataset stands for every trace under its traces/).
    #[arg(required = true, value_name = "TRACE")]
    traces: Vec<PathBuf>,
    /// Bandwidth of the migration stream (bytes/s or bits/s).
    #[arg(long, allow_hyphen_values = true, value_parser = dirtytrace::units::parse_speed)]
    bandwidth: HumanRate,
    #[command(flatten)]
    precopy: replay::Precopy,
    /// Trace time at which the migration starts.
    #[arg(long, default_value_t = HumanDuration(Duration::ZERO), allow_hyphen_values = true)]
    start: HumanDuration,
    /// The longest migration to replay (migration time): a longer one is an error.
    #[arg(long, default_value_t = HumanDuration(replay::DEFAULT_MAX_TIME), allow_hyphen_values = true)]
    max_time: HumanDuration,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PlotArgs {
    /// The trace directory.
    trace: PathBuf,
    /// The figure: .png or .svg. Default: TRACE/plot.png.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// Runs an analysis over its arguments: one trace prints as before; several traces, or a
/// dataset, print one result per trace (`--json`: an array of rows, each with `trace_dir` and
/// `name`), and the exit code is 1 if any trace failed.
fn for_traces<T: serde::Serialize>(
    paths: &[PathBuf],
    json_out: bool,
    analyse: impl Fn(&trace::Trace) -> anyhow::Result<T>,
    text: impl Fn(&T) -> String,
) -> anyhow::Result<ExitCode> {
    if let [one] = paths {
        if dataset::is_trace(one) {
            let r = analyse(&trace::Trace::open(one)?)?;
            print!("{}", if json_out { json(&r)? } else { text(&r) });
            return Ok(ExitCode::SUCCESS);
        }
    }
    let results: Vec<(PathBuf, anyhow::Result<T>)> = dataset::expand_inputs(paths)?
        .into_iter()
        .map(|d| {
            let r = trace::Trace::open(&d).map_err(anyhow::Error::from).and_then(|t| analyse(&t));
            (d, r)
        })
        .collect();
    if json_out {
        let rows: Vec<serde_json::Value> = results.iter().map(|(d, r)| dataset::json_row(d, r)).collect();
        print!("{}", json(&rows)?);
    } else {
        for (d, r) in &results {
            match r {
                Ok(v) => print!("== {} ==\n{}\n", d.display(), text(v)),
                Err(e) => print!("== {} ==\nerror: {}\n\n", d.display(), causes(e)),
            }
        }
    }
    Ok(if results.iter().any(|(_, r)| r.is_err()) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn run_analysis(command: AnalysisCommand) -> anyhow::Result<ExitCode> {
    match command {
        AnalysisCommand::Summarize(a) => {
            let opts = summary::SummaryOptions { phase: a.phase, top_pages: a.top, ..Default::default() };
            for_traces(&a.traces, a.json, |t| Ok(summary::summarize(t, &opts)?), report::summary_text)
        }
        AnalysisCommand::Simgrid(a) => {
            let opts = simgrid::SimgridOptions { migration_speed: a.migration_speed.map(|r| r.0), phase: a.phase };
            let format = if a.json { SimgridFormat::Json } else { a.format };
            let several = a.traces.len() > 1 || !dataset::is_trace(&a.traces[0]);
            if several && matches!(format, SimgridFormat::C | SimgridFormat::Cpp) {
                anyhow::bail!("--format c and cpp print one function: give one trace directory");
            }
            if let Some(start) = a.start {
                let mut o = start::StartOptions::new(start.0.as_secs_f64());
                o.migration_speed = opts.migration_speed;
                o.looped = a.looped;
                o.max_rounds = a.max_rounds;
                return for_traces(
                    &a.traces,
                    format == SimgridFormat::Json,
                    |t| Ok(start::fit_start(t, &o)?),
                    |p| match format {
                        SimgridFormat::C => simgrid::start_c_snippet(p),
                        SimgridFormat::Cpp => simgrid::start_cpp_snippet(p),
                        _ => report::simgrid_start_text(p),
                    },
                );
            }
            for_traces(
                &a.traces,
                format == SimgridFormat::Json,
                |t| Ok(simgrid::fit(t, &opts)?),
                |p| match format {
                    SimgridFormat::C => simgrid::c_snippet(p),
                    SimgridFormat::Cpp => simgrid::cpp_snippet(p),
                    _ => report::simgrid_text(p),
                },
            )
        }
        AnalysisCommand::Replay(a) => {
            let o = replay::ReplayOptions {
                bandwidth_bytes_per_s: a.bandwidth.0,
                precopy: a.precopy,
                start_s: a.start.0.as_secs_f64(),
                max_time_s: a.max_time.0.as_secs_f64(),
            };
            for_traces(&a.traces, a.json, |t| Ok(replay::replay(t, &o)?), report::replay_text)
        }
        AnalysisCommand::Plot(a) => {
            let out = a.output.unwrap_or_else(|| a.trace.join("plot.png"));
            plot::plot(&trace::Trace::open(&a.trace)?, &plot::PlotOptions::new(&out))?;
            eprintln!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Subcommand)]
enum KitCommand {
    /// Download Debian's cloud kernel and busybox-static into the cache (Debian and Ubuntu hosts).
    Fetch,
    /// Show which kernel and busybox `record` would use.
    Show,
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Say what `record --disk` finds in an image, and whether it will work: format, backing
    /// files, partitions and filesystems read on the host, then a short probe boot under QEMU
    /// that finds the root as `record` does, runs its /bin/sh and reads its /etc/os-release.
    /// The image is never written. Exit code 0: it will work; 1: it will not.
    Check {
        /// The image (raw or qcow2).
        image: PathBuf,
        /// The image's format [default: read from its header].
        #[arg(long, value_name = "FORMAT")]
        disk_format: Option<dirtytrace::disk::DiskFormat>,
        /// The root filesystem's device in the guest, like /dev/vda2.
        #[arg(long, value_name = "DEVICE")]
        disk_root: Option<String>,
        /// Only what the host can read; no probe boot.
        #[arg(long)]
        no_boot: bool,
    },
}

fn run_disk(cmd: DiskCommand) -> anyhow::Result<ExitCode> {
    let DiskCommand::Check { image, disk_format, disk_root, no_boot } = cmd;
    let inputs = dirtytrace::disk::DiskInputs { disk: Some(image), disk_format, disk_root };
    let ok = dirtytrace::guest::linux::disk_check::run(&inputs, !no_boot, &mut std::io::stdout())?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_kit(cmd: KitCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KitCommand::Fetch => {
            let info = kit::fetch(&mut |m| eprintln!("kit: {m}"))?;
            eprintln!(
                "kit: {} {} and {} {} in {}",
                info.kernel_package,
                info.kernel_version,
                info.busybox_package,
                info.busybox_version,
                kit::kit_dir().display()
            );
        }
        KitCommand::Show => {
            let k = kit::locate(None, None, false)?;
            println!("kernel   {}", k.kernel.display());
            if let Some(a) = &k.alternate {
                println!("also     {}", a.display());
            }
            println!("busybox  {}", k.busybox.display());
            if let Some(i) = &k.info {
                println!(
                    "from     {} {}, {} {}",
                    i.kernel_package, i.kernel_version, i.busybox_package, i.busybox_version
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
struct RecordArgs {
    /// Workload: a synthetic spec (.toml, see schemas/workload.md) or a shell script run in a
    /// Linux guest (.sh, see schemas/linux-guest.md). Default: the built-in synthetic spec.
    #[arg(long, value_name = "FILE")]
    workload: Option<PathBuf>,
    #[command(flatten)]
    settings: record::RecordSettings,
    /// Trace directory to create (must not exist, or be empty). Default: ./trace-<UTC time>.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Real-time priority (SCHED_FIFO) for the sampler thread alone, so that short intervals
    /// keep their deadlines: auto uses it where permitted (root or CAP_SYS_NICE) and says when
    /// it cannot; on makes the lack of permission an error.
    #[arg(long, value_enum, default_value_t = dirtytrace::record::RealtimeMode::Auto)]
    realtime: dirtytrace::record::RealtimeMode,
    /// The most the sampler wakes before each deadline and spins on the clock, learning how
    /// late the host's timers fire; capped at a twentieth of the interval (under 5 % of a
    /// core). Default: 50us for intervals of 2 ms or less, else 0 (never).
    #[arg(long, value_name = "DURATION")]
    spin: Option<HumanDuration>,
    /// The KVM device (default /dev/kvm, or $DIRTYTRACE_KVM_DEVICE).
    #[arg(long, value_name = "PATH")]
    kvm_device: Option<PathBuf>,
    #[command(flatten, next_help_heading = LINUX_HEADING)]
    linux: LinuxInputs,
    /// Stream the serial console to stderr as well.
    #[arg(long, help_heading = LINUX_HEADING)]
    console: bool,
    /// Keep QEMU's record/replay log of the execution, with the kernel and initramfs, in the
    /// trace (TRACE/execution/), so that `dirtytrace retrace` can record it again (--clock
    /// guest only).
    #[arg(long)]
    keep_execution: bool,
}

#[derive(Args)]
struct RetraceArgs {
    /// The trace whose execution to replay.
    trace: PathBuf,
    /// Guest time between harvests [default: the trace's]
    #[arg(long, value_name = "DURATION")]
    interval: Option<HumanDuration>,
    /// Migration speed for the SimGrid columns [default: the trace's]
    #[arg(long, value_name = "RATE")]
    migration_speed: Option<dirtytrace::units::HumanRate>,
    /// Trace directory to create (must not exist, or be empty). Default: ./trace-<UTC time>.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Stream the serial console to stderr as well.
    #[arg(long)]
    console: bool,
}

/// Where `record --help` lists the flags of `.sh` workloads.
const LINUX_HEADING: &str = "Linux guest (.sh workloads)";

#[derive(Args)]
struct InitramfsArgs {
    /// The workload script (.sh), run by the archive's /init.
    #[arg(long, value_name = "FILE")]
    workload: PathBuf,
    #[command(flatten)]
    contents: initramfs::Contents,
    /// The guest RAM the archive is for: it must fit there with its unpacked files, as
    /// `record --mem` checks [default: 2GiB, record's]
    #[arg(long, value_name = "SIZE")]
    mem: Option<dirtytrace::units::HumanSize>,
    /// The archive to write (.cpio.gz); must not exist.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

fn run_initramfs(a: InitramfsArgs) -> anyhow::Result<ExitCode> {
    let inputs = initramfs::Inputs {
        busybox: kit::locate_busybox(a.contents.busybox.as_deref())?,
        script: a.workload,
        contents: a.contents,
        disk: None,
    };
    let mem = a.mem.map_or(dirtytrace::record::LINUX_DEFAULT_MEM, |m| m.0);
    let archive = initramfs::write_archive(&inputs, mem, &a.output, &mut |m| eprintln!("initramfs: {m}"))?;
    for note in &archive.notes {
        eprintln!("initramfs: {note}");
    }
    eprintln!("wrote {}: {}", a.output.display(), archive.summary());
    Ok(ExitCode::SUCCESS)
}

fn run_doctor(json: bool) -> anyhow::Result<ExitCode> {
    let report = dirtytrace::doctor::run(&dirtytrace::vmm::kvm_device_path());
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", dirtytrace::doctor::render(&report));
    }
    Ok(if report.synthetic_guest.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

impl RecordArgs {
    fn into_options(self) -> record::RecordOptions {
        let mut opts = record::RecordOptions::new(self.output.unwrap_or_else(record::default_output_dir));
        opts.workload = self.workload;
        opts.settings = self.settings;
        opts.realtime = self.realtime;
        opts.spin = self.spin.map(|d| d.0);
        if let Some(k) = self.kvm_device {
            opts.kvm_device = k;
        }
        (opts.linux, opts.console) = (self.linux, self.console);
        opts.keep_execution = self.keep_execution;
        opts
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Which measurements (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<bench::BenchStep>,
    /// Guest RAM for the cost, slowdown and compression runs.
    #[arg(long, default_value_t = HumanSize(bench::DEFAULT_MEM))]
    mem: HumanSize,
    /// Guest sizes for the deadline runs (sparse; comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = bench::DEFAULT_DEADLINE_MEM.map(HumanSize))]
    deadline_mem: Vec<HumanSize>,
    /// Length of each recording, in seconds.
    #[arg(long, default_value_t = bench::DEFAULT_SECONDS)]
    seconds: f64,
    /// Where the recordings go: a fresh directory of the bench's own is made inside it and
    /// removed afterwards; nothing else in it is touched.
    #[arg(long, default_value = bench::DEFAULT_WORK_DIR)]
    work_dir: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn run_bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let opts = bench::BenchOptions {
        work_dir: a.work_dir,
        mem: a.mem.0,
        deadline_mem: a.deadline_mem.iter().map(|m| m.0).collect(),
        seconds: a.seconds,
    };
    let report = bench::run_steps(&opts, &a.only, |step| eprintln!("bench: {step:?} ..."))?;
    print!("{}", if a.json { json(&report)? } else { report::bench_text(&report) });
    Ok(ExitCode::SUCCESS)
}

fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    // SIGHUP too: a closed terminal ends the recording with a finalised trace, as Ctrl-C does.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

fn progress_bar(expected: Option<Duration>) -> Option<record::Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match expected {
        Some(d) => indicatif::ProgressBar::new(d.as_millis() as u64),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(Box::new(move |row: &trace::IntervalRow| {
        bar.set_position((row.t_end_s * 1e3) as u64);
        bar.set_message(format!(
            "{} intervals, {:.1} MiB/s, phase {}",
            row.interval + 1,
            row.dirty_rate_bytes_per_s / MIB as f64,
            row.phase
        ));
    }))
}

fn run_record(a: RecordArgs) -> anyhow::Result<ExitCode> {
    let json_out = a.json;
    run_recorder(a.into_options(), json_out, |_| Ok(()))
}

fn run_retrace(a: RetraceArgs) -> anyhow::Result<ExitCode> {
    let changes = dirtytrace::execution::Retrace {
        interval: a.interval.map(|d| d.0),
        migration_speed_bytes_per_s: a.migration_speed.map(|r| r.0),
        console: a.console,
    };
    let opts = dirtytrace::execution::retrace_options(
        &a.trace,
        &changes,
        a.output.unwrap_or_else(record::default_output_dir),
    )?;
    let log = opts.replay.as_ref().map(|r| r.execution.log.clone()).unwrap_or_default();
    run_recorder(opts, a.json, |s| dirtytrace::execution::check_replayed(s, &log))
}

fn run_recorder(
    opts: record::RecordOptions,
    json_out: bool,
    check: impl FnOnce(&record::RecordSummary) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let recorder = record::Recorder::try_from(opts)?;
    for note in recorder.notes() {
        eprintln!("note: {note}");
    }
    let progress = progress_bar(recorder.expected_duration());
    let summary = recorder.run(interrupt_flag(), progress)?;
    check(&summary)?;
    if json_out {
        print!("{}", json(&summary)?);
    } else {
        eprint!("{}", report::record_summary(&summary));
    }
    Ok(match summary.status {
        trace::TraceStatus::Interrupted => ExitCode::from(130),
        trace::TraceStatus::GuestFault => ExitCode::from(3),
        _ => match summary.guest_exit_status {
            Some(s) if s != 0 => ExitCode::from(s.clamp(1, 255) as u8),
            _ => ExitCode::SUCCESS,
        },
    })
}

fn run_recover(dir: PathBuf) -> anyhow::Result<ExitCode> {
    let finalized = trace::finalize(&dir, trace::TraceStatus::Recovered)?;
    let summary = record::RecordSummary::of_trace(&dir, None)?;
    eprint!("recovered\n{}", report::record_summary(&summary));
    if finalized.losses().is_none() {
        eprintln!("  every frame of the journal was kept");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Record(a) => run_record(*a),
        Command::Retrace(a) => run_retrace(a),
        Command::Bench(a) => run_bench(a),
        Command::Kit(c) => run_kit(c),
        Command::Disk(c) => run_disk(c),
        Command::Recover { trace } => run_recover(trace),
        Command::Initramfs(a) => run_initramfs(a),
        Command::Doctor { json } => run_doctor(json),
        Command::Analysis(c) => run_analysis(c),
        Command::Sweep(a) => run_sweep(a),
        Command::Index(a) => run_index(a),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", causes(&e));
        ExitCode::FAILURE
    })
}

/// An error and its causes, each once ([`dirtytrace::errors::causes`]).
fn causes(e: &anyhow::Error) -> String {
    dirtytrace::errors::causes(e.as_ref())
}
