//! `dirtytrace plot`: one figure of a trace, made in one streaming pass:
//! (a) the dirty rate over time with the phases shaded, (b) a page-by-time heatmap of
//! dirtying, down-sampled to at most [`HEAT_TIME_BINS`] × [`HEAT_PAGE_BINS`] cells, and
//! (c) the working-set curve (distinct bytes dirtied within windows of 0.1 s to 30 s).
//!
//! PNG or SVG, chosen by the output's extension. Labels use a TrueType font loaded at run
//! time: `$DIRTYTRACE_FONT`, or DejaVu Sans (Debian: `fonts-dejavu-core`), or Liberation Sans.

use super::summary::{Summary, SummaryBuilder, SummaryOptions};
use super::{for_each_interval, AnalysisError, PageSpace, Result};
use crate::trace::Trace;
use crate::units::MIB;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The heatmap's most columns (time bins).
pub const HEAT_TIME_BINS: usize = 480;
/// The heatmap's most rows (page bins).
pub const HEAT_PAGE_BINS: usize = 192;
/// The rate panel draws at most this many points: longer traces are averaged in buckets.
pub const RATE_POINTS: usize = 2000;

/// Where `plot` looks for a font, in order, when `$DIRTYTRACE_FONT` is not set.
pub const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// Where and how large to draw.
#[derive(Debug, Clone)]
pub struct PlotOptions {
    /// `.png` or `.svg`.
    pub output: PathBuf,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl PlotOptions {
    /// The default size, into `output`.
    pub fn new(output: impl Into<PathBuf>) -> Self {
        PlotOptions { output: output.into(), width: 1200, height: 1150 }
    }
}

/// What was drawn, for the caller to report (and tests to check).
#[derive(Debug, Clone)]
pub struct PlotData {
    /// The trace's summary, as `summarize` gives it.
    pub summary: Summary,
    /// (time s, mean rate B/s, max rate B/s) per bucket of intervals.
    pub rate: Vec<(f64, f64, f64)>,
    /// (phase, start s, end s) per run of consecutive intervals.
    pub phase_runs: Vec<(String, f64, f64)>,
    /// The heatmap's columns.
    pub heat_time_bins: usize,
    /// The heatmap's rows.
    pub heat_page_bins: usize,
    /// Start time of each time bin, and the trace's end: `heat_time_bins + 1` edges (s).
    pub heat_time_edges_s: Vec<f64>,
    /// Fraction of (page, interval) pairs dirty per cell, time-major.
    pub heat: Vec<f32>,
    /// Pages in the guest.
    pub total_pages: u64,
    /// When the trace ends (s).
    pub end_s: f64,
}

impl PlotData {
    /// The dirty fraction of one heatmap cell.
    pub fn heat_at(&self, time_bin: usize, page_bin: usize) -> f32 {
        self.heat[time_bin * self.heat_page_bins + page_bin]
    }
}

/// Reads the trace once and collects what the figure shows.
pub fn collect(trace: &Trace) -> Result<PlotData> {
    super::require_intervals(trace, "draw")?;
    let m = &trace.manifest;
    let space = PageSpace::new(&m.slots);
    let n = m.intervals.max(1) as usize;
    let total_pages = space.total_pages.max(1);
    let tb = n.min(HEAT_TIME_BINS);
    let pb = (total_pages as usize).min(HEAT_PAGE_BINS);
    let mut counts = vec![0u32; tb * pb];
    let mut intervals_in_bin = vec![0u32; tb];
    let mut time_edges = vec![f64::NAN; tb + 1];
    let page_bin_of = |p: u32| (p as u64 * pb as u64 / total_pages) as usize;
    let per_bucket = n.div_ceil(RATE_POINTS);
    let mut rate = Vec::with_capacity(n.min(RATE_POINTS));
    let (mut bucket_bytes, mut bucket_dur, mut bucket_max, mut bucket_t0, mut in_bucket) = (0u64, 0.0, 0.0f64, 0.0, 0);
    let mut phase_runs: Vec<(String, f64, f64)> = Vec::new();
    let mut builder = SummaryBuilder::new(trace, SummaryOptions::default());
    let mut k = 0usize;
    let mut end_s = 0.0;
    for_each_interval(trace, |row, pages| {
        builder.push(row, pages);
        let t = (k * tb / n).min(tb - 1);
        if intervals_in_bin[t] == 0 {
            time_edges[t] = row.t_start_s;
        }
        intervals_in_bin[t] += 1;
        let cells = &mut counts[t * pb..(t + 1) * pb];
        for &p in pages {
            cells[page_bin_of(p)] += 1;
        }
        if in_bucket == 0 {
            bucket_t0 = row.t_start_s;
        }
        in_bucket += 1;
        bucket_bytes += row.dirty_bytes;
        bucket_dur += row.duration_s;
        bucket_max = bucket_max.max(row.dirty_rate_bytes_per_s);
        if in_bucket == per_bucket {
            let mean = if bucket_dur > 0.0 { bucket_bytes as f64 / bucket_dur } else { 0.0 };
            rate.push(((bucket_t0 + row.t_end_s) / 2.0, mean, bucket_max));
            (bucket_bytes, bucket_dur, bucket_max, in_bucket) = (0, 0.0, 0.0, 0);
        }
        match phase_runs.last_mut() {
            Some(r) if r.0 == row.phase => r.2 = row.t_end_s,
            _ => phase_runs.push((row.phase.clone(), row.t_start_s, row.t_end_s)),
        }
        end_s = row.t_end_s;
        k += 1;
        Ok(ControlFlow::Continue(()))
    })?;
    if in_bucket > 0 {
        let mean = if bucket_dur > 0.0 { bucket_bytes as f64 / bucket_dur } else { 0.0 };
        rate.push(((bucket_t0 + end_s) / 2.0, mean, bucket_max));
    }
    time_edges[tb] = end_s;
    for j in (0..tb).rev() {
        if time_edges[j].is_nan() {
            time_edges[j] = time_edges[j + 1];
        }
    }
    let mut pages_in_bin = vec![0u64; pb];
    for p in 0..total_pages {
        pages_in_bin[(p * pb as u64 / total_pages) as usize] += 1;
    }
    let heat = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let denom = intervals_in_bin[i / pb] as f64 * pages_in_bin[i % pb] as f64;
            if denom > 0.0 {
                (c as f64 / denom) as f32
            } else {
                0.0
            }
        })
        .collect();
    Ok(PlotData {
        summary: builder.finish(trace)?,
        rate,
        phase_runs,
        heat_time_bins: tb,
        heat_page_bins: pb,
        heat_time_edges_s: time_edges,
        heat,
        total_pages: space.total_pages,
        end_s,
    })
}

/// Why the figure's font could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FontError {
    /// `$DIRTYTRACE_FONT` or a system font is not a font plotters can use.
    #[error("{} is not a TrueType/OpenType font", .0.display())]
    NotAFont(PathBuf),
    /// `$DIRTYTRACE_FONT` cannot be read (missing, not a regular file, too large).
    #[error("DIRTYTRACE_FONT: {0}")]
    Unreadable(String),
    /// No font in the usual places.
    #[error(
        "no font for the figure's labels: install DejaVu Sans (Debian/Ubuntu: apt-get install fonts-dejavu-core) or \
         set DIRTYTRACE_FONT to a .ttf file (looked in {0})"
    )]
    Missing(String),
}

/// The largest font file read.
const MAX_FONT_BYTES: u64 = 64 << 20;

/// Loads the font `plot` labels with (`DIRTYTRACE_FONT`, else the first of [`FONT_PATHS`]
/// that reads) once per process, and says which file it is; `doctor` asks this too.
pub fn load_font() -> std::result::Result<PathBuf, FontError> {
    static FONT: OnceLock<std::result::Result<PathBuf, FontError>> = OnceLock::new();
    FONT.get_or_init(|| {
        let register = |path: &Path, bytes: Vec<u8>| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map(|()| path.to_path_buf())
                .map_err(|_| FontError::NotAFont(path.to_path_buf()))
        };
        if let Some(p) = std::env::var_os("DIRTYTRACE_FONT").map(PathBuf::from) {
            let bytes = crate::files::read_regular(&p, MAX_FONT_BYTES, "font")
                .map_err(|e| FontError::Unreadable(e.to_string()))?;
            return register(&p, bytes);
        }
        for path in FONT_PATHS.iter().map(Path::new) {
            if let Ok(bytes) = crate::files::read_regular(path, MAX_FONT_BYTES, "font") {
                return register(path, bytes);
            }
        }
        Err(FontError::Missing(FONT_PATHS.join(", ")))
    })
    .clone()
}

/// Viridis, by linear interpolation between five of its colours; `v` in 0..=1.
fn viridis(v: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 5] = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)];
    let x = v.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The heatmap's colour scale: log10 of the dirty fraction, from 1e-4 (and below) to 1.
const HEAT_DECADES: f64 = 4.0;
fn heat_level(v: f32) -> f64 {
    ((v as f64).log10() + HEAT_DECADES) / HEAT_DECADES
}

const PHASE_SHADES: [RGBColor; 4] =
    [RGBColor(230, 236, 245), RGBColor(246, 234, 222), RGBColor(226, 242, 228), RGBColor(240, 228, 242)];

type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &PlotData, trace: &Trace) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let m = &trace.manifest;
    let s = &d.summary;
    let (w, h) = root.dim_in_pixel();
    let title = format!(
        "dirtytrace {}: {} guest RAM, {} intervals of {} ms, {:.1} s; mean dirty rate {:.1} MiB/s, {:.1} MiB distinct",
        m.trace_id.chars().take(8).collect::<String>(),
        crate::units::HumanBytes(m.ramsize_bytes as f64),
        s.intervals,
        m.interval_s * 1e3,
        s.duration_s,
        s.dirty_rate_bytes_per_s.mean / MIB as f64,
        s.distinct_bytes as f64 / MIB as f64
    );
    let (top, rest) = root.split_vertically(36);
    top.draw_text(&title, &("sans-serif", 17).into_text_style(&top), (12, 10))?;
    let h_rest = h.saturating_sub(36);
    let areas = rest.split_by_breakpoints([] as [u32; 0], [h_rest * 36 / 100, h_rest * 71 / 100]);
    let end = d.end_s.max(1e-3);
    let x_label_area = 40;
    let y_label_area = 80;

    // (a) Dirty rate over time, phases shaded.
    let ymax = d.rate.iter().map(|r| r.2).fold(0.0f64, f64::max) / MIB as f64 * 1.1 + 1e-3;
    let mut a = ChartBuilder::on(&areas[0])
        .margin(10)
        .margin_right(110)
        .caption("(a) dirty rate over time; phases shaded", ("sans-serif", 16))
        .x_label_area_size(x_label_area)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(0f64..end, 0f64..ymax)?;
    a.configure_mesh()
        .x_desc("time since the recording started (s)")
        .y_desc("dirty rate (MiB/s)")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let mut shade_of: Vec<String> = Vec::new();
    for (name, t0, t1) in &d.phase_runs {
        let i = shade_of.iter().position(|n| n == name).unwrap_or_else(|| {
            shade_of.push(name.clone());
            shade_of.len() - 1
        });
        a.draw_series(std::iter::once(Rectangle::new(
            [(*t0, 0.0), (*t1, ymax)],
            PHASE_SHADES[i % PHASE_SHADES.len()].filled(),
        )))?;
        let px_wide = (t1 - t0) / end * (w as f64 - 200.0);
        if px_wide > 8.0 * name.len() as f64 {
            a.draw_series(std::iter::once(Text::new(
                name.clone(),
                (*t0 + end * 0.005, ymax * 0.97),
                ("sans-serif", 13).into_font().color(&BLACK.mix(0.7)),
            )))?;
        }
    }
    let per_bucket = d.summary.intervals as usize > d.rate.len();
    if per_bucket {
        a.draw_series(LineSeries::new(d.rate.iter().map(|r| (r.0, r.2 / MIB as f64)), RGBColor(150, 170, 220)))?
            .label("max interval in bucket")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(150, 170, 220)));
    }
    a.draw_series(LineSeries::new(d.rate.iter().map(|r| (r.0, r.1 / MIB as f64)), BLUE.stroke_width(2)))?
        .label(if per_bucket { "mean (bucketed)" } else { "per interval" })
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    a.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.4)).draw()?;

    // (b) Page-by-time heatmap.
    let mem_mib = d.total_pages as f64 * m.page_size as f64 / MIB as f64;
    let mut b = ChartBuilder::on(&areas[1])
        .margin(10)
        .margin_right(110)
        .caption(
            format!(
                "(b) dirtying by page and time: fraction of each cell's page-intervals dirty ({} × {} cells)",
                d.heat_time_bins, d.heat_page_bins
            ),
            ("sans-serif", 16),
        )
        .x_label_area_size(x_label_area)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(0f64..end, 0f64..mem_mib)?;
    b.configure_mesh()
        .x_desc("time since the recording started (s)")
        .y_desc("guest memory (MiB, slots in order)")
        .disable_mesh()
        .draw()?;
    let (tb, pb) = (d.heat_time_bins, d.heat_page_bins);
    let t_edge = |j: usize| d.heat_time_edges_s[j];
    let p_edge = |i: usize| (i as f64 * d.total_pages as f64 / pb as f64).ceil() / d.total_pages as f64 * mem_mib;
    let mut cells = Vec::new();
    for i in 0..pb {
        let mut j = 0;
        while j < tb {
            let v = d.heat_at(j, i);
            if v <= 0.0 {
                j += 1;
                continue;
            }
            let level = (heat_level(v) * 63.0).round();
            let mut k = j + 1;
            while k < tb && d.heat_at(k, i) > 0.0 && (heat_level(d.heat_at(k, i)) * 63.0).round() == level {
                k += 1;
            }
            cells.push(Rectangle::new(
                [(t_edge(j), p_edge(i)), (t_edge(k), p_edge(i + 1))],
                viridis(level / 63.0).filled(),
            ));
            j = k;
        }
    }
    b.draw_series(cells)?;
    // Colour bar, right of the heatmap.
    let plot_area = b.plotting_area();
    let (px, py) = plot_area.get_base_pixel();
    let (pw, ph) = plot_area.dim_in_pixel();
    let bar_x = px + pw as i32 + 14;
    for step in 0..ph as i32 {
        let v = 1.0 - step as f64 / ph as f64;
        areas[1].draw(&Rectangle::new(
            [
                (bar_x - areas[1].get_base_pixel().0, py + step - areas[1].get_base_pixel().1),
                (bar_x + 14 - areas[1].get_base_pixel().0, py + step + 1 - areas[1].get_base_pixel().1),
            ],
            viridis(v).filled(),
        ))?;
    }
    for dec in 0..=HEAT_DECADES as i32 {
        let frac = dec as f64 / HEAT_DECADES;
        let y = py + ((1.0 - frac) * ph as f64) as i32 - areas[1].get_base_pixel().1;
        let label = match dec - HEAT_DECADES as i32 {
            0 => "1".to_string(),
            e => format!("1e{e}"),
        };
        areas[1].draw(&Text::new(label, (bar_x + 18 - areas[1].get_base_pixel().0, y - 6), ("sans-serif", 12)))?;
    }

    // (c) Working-set curve, one category per window.
    let curve = &s.working_set_curve;
    let nw = curve.len().max(1) as u32;
    let cmax =
        (curve.iter().map(|p| p.max_bytes as f64).fold(s.distinct_bytes as f64, f64::max) / MIB as f64 * 1.1).max(1e-3);
    let mut c = ChartBuilder::on(&areas[2])
        .margin(10)
        .margin_right(110)
        .caption("(c) working-set curve: distinct bytes dirtied within a sliding window", ("sans-serif", 16))
        .x_label_area_size(x_label_area)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d((0u32..nw - 1).into_segmented(), 0f64..cmax)?;
    let window_label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) => curve.get(*i as usize).map(|p| format!("{} s", p.window_s)).unwrap_or_default(),
        _ => String::new(),
    };
    c.configure_mesh()
        .x_desc("window")
        .y_desc("distinct dirtied (MiB)")
        .x_labels(nw as usize)
        .x_label_formatter(&window_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let all = s.distinct_bytes as f64 / MIB as f64;
    c.draw_series(LineSeries::new([(SegmentValue::Exact(0), all), (SegmentValue::Last, all)], BLACK.mix(0.5)))?
        .label("distinct in the whole trace")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.5)));
    if curve.is_empty() {
        c.draw_series(std::iter::once(Text::new(
            "no window of 0.1 s to 30 s fits this trace",
            (SegmentValue::CenterOf(0), cmax / 2.0),
            ("sans-serif", 14),
        )))?;
    }
    let pts = |f: fn(&super::summary::WorkingSetPoint) -> f64| {
        curve.iter().enumerate().map(move |(i, p)| (SegmentValue::CenterOf(i as u32), f(p) / MIB as f64))
    };
    c.draw_series(LineSeries::new(pts(|p| p.max_bytes as f64), RED.stroke_width(2)))?
        .label("max over windows")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
    c.draw_series(pts(|p| p.max_bytes as f64).map(|xy| Circle::new(xy, 4, RED.filled())))?;
    c.draw_series(LineSeries::new(pts(|p| p.mean_bytes), BLUE.stroke_width(2)))?
        .label("mean over windows")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    c.draw_series(pts(|p| p.mean_bytes).map(|xy| Circle::new(xy, 4, BLUE.filled())))?;
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

fn output_kind(path: &Path) -> Result<&'static str> {
    match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("png") => Ok("png"),
        Some("svg") => Ok("svg"),
        _ => Err(super::bad("-o", format!("{}: the figure is written as .png or .svg", path.display()))),
    }
}

/// Draws the figure of `trace` into `opts.output`; returns what it drew.
pub fn plot(trace: &Trace, opts: &PlotOptions) -> Result<PlotData> {
    let kind = output_kind(&opts.output)?;
    let out_err = |msg: String| AnalysisError::Output { path: opts.output.clone(), msg };
    if let Some(parent) = opts.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(out_err(format!("cannot write here: {} is not a directory", parent.display())));
        }
    }
    load_font().map_err(|e| out_err(e.to_string()))?;
    let data = collect(trace)?;
    let size = (opts.width, opts.height);
    let drawn = match kind {
        "png" => {
            draw(BitMapBackend::new(&opts.output, size).into_drawing_area(), &data, trace).map_err(|e| e.to_string())
        }
        _ => draw(SVGBackend::new(&opts.output, size).into_drawing_area(), &data, trace).map_err(|e| e.to_string()),
    };
    drawn.map_err(|e| out_err(format!("cannot draw the figure: {e}")))?;
    Ok(data)
}
