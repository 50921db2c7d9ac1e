//! The command line: parse, then hand over to the library.

use clap::{Args, Parser, Subcommand, ValueEnum};
use dirtytrace::analysis::{plot, replay, simgrid, summary};
use dirtytrace::units::{HumanDuration, HumanRate, HumanSize, MIB};
use dirtytrace::{bench, record, report, trace};
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
`dirtytrace record` boots a guest under KVM, samples its dirty log on a drift-free clock and writes a \
trace directory: a Parquet table of per-interval rates (with SimGrid's live-migration parameters) and \
compressed per-interval dirty bitmaps. Needs read-write access to /dev/kvm (root, or the kvm group).\n\n\
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
    Record(RecordArgs),
    /// Measure the recorder: harvest cost, deadlines, guest slowdown, compression.
    Bench(BenchArgs),
    /// The guest kernel kit for Linux workloads.
    #[command(subcommand)]
    Kit(KitCommand),
    /// Finalise a trace whose recorder was killed, from its journal.
    Recover {
        /// The trace directory.
        trace: PathBuf,
    },
    #[command(flatten)]
    Analysis(AnalysisCommand),
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
    /// The trace directory.
    trace: PathBuf,
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
    /// The trace directory.
    trace: PathBuf,
    /// Migration speed (bytes/s or bits/s). Default: the one the trace was recorded with.
    #[arg(long, allow_hyphen_values = true)]
    migration_speed: Option<HumanRate>,
    /// Fit to the intervals of this phase only.
    #[arg(long)]
    phase: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SimgridFormat::Human)]
    format: SimgridFormat,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// The trace directory.
    trace: PathBuf,
    /// Bandwidth of the migration stream (bytes/s or bits/s).
    #[arg(long, allow_hyphen_values = true)]
    bandwidth: HumanRate,
    /// Stop-and-copy starts once the rest can be sent within this long.
    #[arg(long, default_value_t = HumanDuration(replay::DEFAULT_MAX_DOWNTIME), allow_hyphen_values = true)]
    max_downtime: HumanDuration,
    /// Precopy rounds (round 0 included) before a forced stop-and-copy.
    #[arg(long, default_value_t = replay::DEFAULT_MAX_ROUNDS, allow_hyphen_values = true)]
    max_rounds: u32,
    /// Trace time at which the migration starts.
    #[arg(long, default_value_t = HumanDuration(Duration::ZERO), allow_hyphen_values = true)]
    start: HumanDuration,
    /// Repeat the trace when the migration outlasts it.
    #[arg(long = "loop")]
    looped: bool,
    /// The longest migration to replay (migration time): a longer one is an error.
    #[arg(long, default_value_t = HumanDuration(replay::DEFAULT_MAX_TIME), allow_hyphen_values = true)]
    max_time: HumanDuration,
    /// send: round 0 sends every page (SimGrid); skip: a still-zero page costs 9 bytes (QEMU).
    #[arg(long, value_enum, default_value_t = replay::ZeroPages::Send)]
    zero_pages: replay::ZeroPages,
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

fn run_analysis(command: AnalysisCommand) -> anyhow::Result<ExitCode> {
    let open = |dir: &PathBuf| trace::Trace::open(dir);
    match command {
        AnalysisCommand::Summarize(a) => {
            let opts = summary::SummaryOptions { phase: a.phase, top_pages: a.top, ..Default::default() };
            let s = summary::summarize(&open(&a.trace)?, &opts)?;
            print!("{}", if a.json { json(&s)? } else { report::summary_text(&s) });
        }
        AnalysisCommand::Simgrid(a) => {
            let opts = simgrid::SimgridOptions { migration_speed: a.migration_speed.map(|r| r.0), phase: a.phase };
            let p = simgrid::fit(&open(&a.trace)?, &opts)?;
            let format = if a.json { SimgridFormat::Json } else { a.format };
            print!(
                "{}",
                match format {
                    SimgridFormat::Json => json(&p)?,
                    SimgridFormat::C => simgrid::c_snippet(&p),
                    SimgridFormat::Cpp => simgrid::cpp_snippet(&p),
                    SimgridFormat::Human => report::simgrid_text(&p),
                }
            );
        }
        AnalysisCommand::Replay(a) => {
            let mut o = replay::ReplayOptions::new(a.bandwidth.0);
            o.max_downtime_s = a.max_downtime.0.as_secs_f64();
            o.max_rounds = a.max_rounds;
            o.start_s = a.start.0.as_secs_f64();
            o.looped = a.looped;
            o.max_time_s = a.max_time.0.as_secs_f64();
            o.zero_pages = a.zero_pages;
            let r = replay::replay(&open(&a.trace)?, &o)?;
            print!("{}", if a.json { json(&r)? } else { report::replay_text(&r) });
        }
        AnalysisCommand::Plot(a) => {
            let out = a.output.unwrap_or_else(|| a.trace.join("plot.png"));
            plot::plot(&open(&a.trace)?, &plot::PlotOptions::new(&out))?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum KitCommand {
    /// Download Debian's cloud kernel and busybox-static into the cache (Debian and Ubuntu hosts).
    Fetch,
    /// Show which kernel and busybox `record` would use.
    Show,
}

fn run_kit(cmd: KitCommand) -> anyhow::Result<ExitCode> {
    use dirtytrace::guest::linux::kit;
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
            let k = kit::locate(None, false)?;
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
    /// Time between harvests of the dirty log (1ms to 1h).
    #[arg(long, default_value_t = HumanDuration(record::DEFAULT_INTERVAL))]
    interval: HumanDuration,
    /// Stop after this long, even if the workload goes on.
    #[arg(long)]
    duration: Option<HumanDuration>,
    /// Guest RAM, overriding the workload's `mem`.
    #[arg(long)]
    mem: Option<HumanSize>,
    /// Number of vCPUs, overriding the workload's `vcpus`.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Migration speed for the SimGrid columns (bytes/s or bits/s).
    #[arg(long, default_value_t = HumanRate(record::DEFAULT_MIGRATION_SPEED_BYTES_PER_S))]
    migration_speed: HumanRate,
    /// Trace directory to create (must not exist, or be empty). Default: ./trace-<UTC time>.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Hold every vCPU outside the guest around each harvest: an exact cut between intervals,
    /// at the cost of a short pause of the guest per harvest (see `bench --only cut`).
    #[arg(long)]
    exact_cut: bool,
    /// The KVM device (default /dev/kvm, or $DIRTYTRACE_KVM_DEVICE).
    #[arg(long, value_name = "PATH")]
    kvm_device: Option<PathBuf>,
    /// Linux guest: the kernel, a bzImage or an ELF vmlinux (default: $DIRTYTRACE_KERNEL, then the kit).
    #[arg(long, value_name = "PATH", help_heading = "Linux guest (.sh workloads)")]
    kernel: Option<PathBuf>,
    /// Linux guest: copy a host file into the initramfs (repeatable).
    #[arg(long = "file", value_name = "HOST_PATH:GUEST_PATH", help_heading = "Linux guest (.sh workloads)")]
    files: Vec<String>,
    /// Linux guest: extra kernel command-line arguments.
    #[arg(long, value_name = "EXTRA", help_heading = "Linux guest (.sh workloads)")]
    cmdline: Option<String>,
    /// Linux guest: stream the serial console to stderr as well.
    #[arg(long, help_heading = "Linux guest (.sh workloads)")]
    console: bool,
    /// Linux guest: boot the kit's bzImage even when its vmlinux (PVH entry) is available.
    #[arg(long, help_heading = "Linux guest (.sh workloads)")]
    bzimage: bool,
}

impl RecordArgs {
    fn into_options(self) -> record::RecordOptions {
        let mut opts = record::RecordOptions::new(self.output.unwrap_or_else(record::default_output_dir));
        opts.workload = self.workload;
        opts.interval = self.interval.0;
        opts.duration = self.duration.map(|d| d.0);
        opts.mem = self.mem.map(|m| m.0);
        opts.vcpus = self.vcpus;
        opts.migration_speed = self.migration_speed.0;
        opts.exact_cut = self.exact_cut;
        if let Some(k) = self.kvm_device {
            opts.kvm_device = k;
        }
        opts.linux = record::LinuxRecordOptions {
            kernel: self.kernel,
            files: self.files,
            cmdline: self.cmdline,
            console: self.console,
            force_bzimage: self.bzimage,
        };
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
    /// Guest RAM for the deadline runs.
    #[arg(long, default_value_t = HumanSize(bench::DEFAULT_DEADLINE_MEM))]
    deadline_mem: HumanSize,
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
    let opts =
        bench::BenchOptions { work_dir: a.work_dir, mem: a.mem.0, deadline_mem: a.deadline_mem.0, seconds: a.seconds };
    let report = bench::run_steps(&opts, &a.only, |step| eprintln!("bench: {step:?} ..."))?;
    print!("{}", if a.json { json(&report)? } else { bench::render(&report) });
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
    let recorder = record::Recorder::try_from(a.into_options())?;
    let progress = progress_bar(recorder.expected_duration());
    let summary = recorder.run(interrupt_flag(), progress)?;
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
        Command::Record(a) => run_record(a),
        Command::Bench(a) => run_bench(a),
        Command::Kit(c) => run_kit(c),
        Command::Recover { trace } => run_recover(trace),
        Command::Analysis(c) => run_analysis(c),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
