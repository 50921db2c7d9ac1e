//! The two Parquet tables: `rates.parquet` (one row per interval) and `bitmaps.parquet`
//! (one row per interval and memory slot). Column names, types and units are documented in
//! `schemas/rates.md` and `schemas/bitmaps.md`; a test keeps the two in step.

use super::records::{Encoding, IntervalRow, SlotBlob};
use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// The schema of `rates.parquet`.
pub fn rates_schema() -> SchemaRef {
    use DataType::*;
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Arc::new(Schema::new(vec![
        f("interval", UInt64),
        f("t_start_s", Float64),
        f("t_end_s", Float64),
        f("duration_s", Float64),
        f("partial", Boolean),
        f("dirty_pages", UInt64),
        f("dirty_bytes", UInt64),
        f("dirty_rate_bytes_per_s", Float64),
        f("new_pages", UInt64),
        f("distinct_pages_total", UInt64),
        f("working_set_memory_bytes", UInt64),
        f("cpu_util", Float64),
        f("cpu_util_per_vcpu", list_of(Float64)),
        f("phase", Utf8),
        f("trace_id", Utf8),
        f("ramsize_bytes", UInt64),
        f("migration_speed_bytes_per_s", Float64),
        Field::new("dp_intensity", Float64, true),
        f("harvest_lateness_s", Float64),
        f("harvest_ioctl_s", Float64),
        f("guest_progress_before", list_of(UInt64)),
        f("guest_progress_after", list_of(UInt64)),
    ]))
}

/// The schema of `bitmaps.parquet`.
pub fn bitmaps_schema() -> SchemaRef {
    use DataType::*;
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Arc::new(Schema::new(vec![
        f("interval", UInt64),
        f("slot", UInt32),
        f("first_page", UInt64),
        f("num_pages", UInt64),
        f("dirty_pages", UInt64),
        f("encoding", Utf8),
        f("raw_bytes", UInt64),
        f("data", Binary),
    ]))
}

/// The column names of `rates.parquet`, in order.
pub fn rate_columns() -> Vec<String> {
    rates_schema().fields().iter().map(|f| f.name().clone()).collect()
}

/// The column names of `bitmaps.parquet`, in order.
pub fn bitmap_columns() -> Vec<String> {
    bitmaps_schema().fields().iter().map(|f| f.name().clone()).collect()
}

fn u64_col(rows: &[IntervalRow], f: impl Fn(&IntervalRow) -> u64) -> ArrayRef {
    Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
}

fn f64_col(rows: &[IntervalRow], f: impl Fn(&IntervalRow) -> f64) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
}

fn str_col(rows: &[IntervalRow], f: impl Fn(&IntervalRow) -> &str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}

fn list_f64(rows: &[IntervalRow], f: impl Fn(&IntervalRow) -> &[f64]) -> ArrayRef {
    let mut b = ListBuilder::new(Float64Builder::new());
    for r in rows {
        b.values().append_slice(f(r));
        b.append(true);
    }
    Arc::new(b.finish())
}

fn list_u64(rows: &[IntervalRow], f: impl Fn(&IntervalRow) -> &[u64]) -> ArrayRef {
    let mut b = ListBuilder::new(UInt64Builder::new());
    for r in rows {
        b.values().append_slice(f(r));
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Rows as a batch of `rates.parquet`.
pub fn rates_batch(rows: &[IntervalRow]) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        u64_col(rows, |r| r.interval),
        f64_col(rows, |r| r.t_start_s),
        f64_col(rows, |r| r.t_end_s),
        f64_col(rows, |r| r.duration_s),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.partial)))),
        u64_col(rows, |r| r.dirty_pages),
        u64_col(rows, |r| r.dirty_bytes),
        f64_col(rows, |r| r.dirty_rate_bytes_per_s),
        u64_col(rows, |r| r.new_pages),
        u64_col(rows, |r| r.distinct_pages_total),
        u64_col(rows, |r| r.working_set_memory_bytes),
        f64_col(rows, |r| r.cpu_util),
        list_f64(rows, |r| &r.cpu_util_per_vcpu),
        str_col(rows, |r| &r.phase),
        str_col(rows, |r| &r.trace_id),
        u64_col(rows, |r| r.ramsize_bytes),
        f64_col(rows, |r| r.migration_speed_bytes_per_s),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.dp_intensity))),
        f64_col(rows, |r| r.harvest_lateness_s),
        f64_col(rows, |r| r.harvest_ioctl_s),
        list_u64(rows, |r| &r.guest_progress_before),
        list_u64(rows, |r| &r.guest_progress_after),
    ];
    RecordBatch::try_new(rates_schema(), cols).expect("columns match the schema")
}

/// A table whose columns are not the documented ones.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ColumnError {
    /// A documented column is not there.
    #[error("column `{0}` is missing")]
    Missing(String),
    /// A column has another type than documented.
    #[error("column `{0}` has the wrong type")]
    WrongType(String),
    /// A column holds nulls where every row needs a value.
    #[error("column `{0}` has empty (null) cells")]
    Nulls(String),
    /// An encoding this dirtytrace does not know.
    #[error("row {row}: `encoding` is {value:?}, which this dirtytrace does not know (a newer dirtytrace?)")]
    UnknownEncoding {
        /// The row within the batch (the reader makes it the row within the file).
        row: usize,
        /// The value found.
        value: String,
    },
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, ColumnError> {
    let c = b.column_by_name(name).ok_or_else(|| ColumnError::Missing(name.into()))?;
    // `dp_intensity` is the one column whose cells may be null.
    if name != "dp_intensity" && c.null_count() > 0 {
        return Err(ColumnError::Nulls(name.into()));
    }
    c.as_any().downcast_ref::<T>().ok_or_else(|| ColumnError::WrongType(name.into()))
}

fn list_values<T: arrow::datatypes::ArrowPrimitiveType>(l: &ListArray, i: usize) -> Vec<T::Native> {
    l.value(i).as_any().downcast_ref::<PrimitiveArray<T>>().map(|a| a.values().to_vec()).unwrap_or_default()
}

/// A batch of `rates.parquet` as rows, or the first column that is missing or mistyped.
pub fn rows_from_batch(b: &RecordBatch) -> Result<Vec<IntervalRow>, ColumnError> {
    use arrow::datatypes::{Float64Type, UInt64Type};
    let u = |n| col::<UInt64Array>(b, n);
    let f = |n| col::<Float64Array>(b, n);
    let s = |n| col::<StringArray>(b, n);
    let l = |n| col::<ListArray>(b, n);
    let (interval, t_start, t_end, dur) = (u("interval")?, f("t_start_s")?, f("t_end_s")?, f("duration_s")?);
    let partial = col::<BooleanArray>(b, "partial")?;
    let (dp, db, rate, newp, total, ws) = (
        u("dirty_pages")?,
        u("dirty_bytes")?,
        f("dirty_rate_bytes_per_s")?,
        u("new_pages")?,
        u("distinct_pages_total")?,
        u("working_set_memory_bytes")?,
    );
    let (cpu, cpu_v, phase, tid) = (f("cpu_util")?, l("cpu_util_per_vcpu")?, s("phase")?, s("trace_id")?);
    let (ram, speed, dpi) = (u("ramsize_bytes")?, f("migration_speed_bytes_per_s")?, f("dp_intensity")?);
    let (late, ioctl, pb, pa) =
        (f("harvest_lateness_s")?, f("harvest_ioctl_s")?, l("guest_progress_before")?, l("guest_progress_after")?);
    Ok((0..b.num_rows())
        .map(|i| IntervalRow {
            interval: interval.value(i),
            t_start_s: t_start.value(i),
            t_end_s: t_end.value(i),
            duration_s: dur.value(i),
            partial: partial.value(i),
            dirty_pages: dp.value(i),
            dirty_bytes: db.value(i),
            dirty_rate_bytes_per_s: rate.value(i),
            new_pages: newp.value(i),
            distinct_pages_total: total.value(i),
            working_set_memory_bytes: ws.value(i),
            cpu_util: cpu.value(i),
            cpu_util_per_vcpu: list_values::<Float64Type>(cpu_v, i),
            phase: phase.value(i).to_string(),
            trace_id: tid.value(i).to_string(),
            ramsize_bytes: ram.value(i),
            migration_speed_bytes_per_s: speed.value(i),
            dp_intensity: dpi.is_valid(i).then(|| dpi.value(i)),
            harvest_lateness_s: late.value(i),
            harvest_ioctl_s: ioctl.value(i),
            guest_progress_before: list_values::<UInt64Type>(pb, i),
            guest_progress_after: list_values::<UInt64Type>(pa, i),
        })
        .collect())
}

/// `(interval, blob)` pairs as a batch of `bitmaps.parquet`.
pub fn bitmaps_batch(rows: &[(u64, SlotBlob)]) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.1.slot))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1.first_page))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1.num_pages))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1.dirty_pages))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.encoding.as_str()))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1.raw_bytes))),
        Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.1.data.as_slice()))),
    ];
    RecordBatch::try_new(bitmaps_schema(), cols).expect("columns match the schema")
}

/// A batch of `bitmaps.parquet` as `(interval, blob)` pairs.
pub fn blobs_from_batch(b: &RecordBatch) -> Result<Vec<(u64, SlotBlob)>, ColumnError> {
    let u = |n| col::<UInt64Array>(b, n);
    let (interval, first, num, dirty, raw) =
        (u("interval")?, u("first_page")?, u("num_pages")?, u("dirty_pages")?, u("raw_bytes")?);
    let slot = col::<UInt32Array>(b, "slot")?;
    let enc = col::<StringArray>(b, "encoding")?;
    let data = col::<BinaryArray>(b, "data")?;
    (0..b.num_rows())
        .map(|i| {
            let encoding = Encoding::parse(enc.value(i)).ok_or_else(|| ColumnError::UnknownEncoding {
                row: i,
                value: enc.value(i).chars().take(64).collect(),
            })?;
            Ok((
                interval.value(i),
                SlotBlob {
                    slot: slot.value(i),
                    first_page: first.value(i),
                    num_pages: num.value(i),
                    encoding,
                    raw_bytes: raw.value(i),
                    dirty_pages: dirty.value(i),
                    data: data.value(i).to_vec(),
                },
            ))
        })
        .collect()
}
