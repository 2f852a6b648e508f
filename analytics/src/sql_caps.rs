//! Argument caps on the scalar functions whose result can be far larger than their
//! arguments (`lpad('x', 400000000)` is 400 MB from a 25-byte query). DataFusion's memory
//! pool counts sorts, joins and aggregations, not what a scalar function allocates, so
//! each of these is wrapped: before the built-in runs, the size of what it would return is
//! worked out from its arguments and the call is refused with `sql_limit` when one value
//! would pass `max_value_bytes` or the whole batch would pass the query's memory limit.
//!
//! ```text
//!  lpad, rpad            the target length            (characters)
//!  repeat                length × count
//!  concat, concat_ws     the sum of the parts
//!  array_repeat          element size × count
//!  range, generate_series (scalar, a list per row)   elements × 8 bytes
//! ```
//!
//! The table function `generate_series(…)` streams its rows and is bounded by the
//! query's deadline instead.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, FieldRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::prelude::SessionContext;

use crate::AnalyticsError;

/// What one scalar function call may produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ValueCaps {
    /// One value (a string, a list).
    pub max_value_bytes: usize,
    /// All values of one call (a batch of rows).
    pub max_call_bytes: usize,
}

/// How a function's result size follows from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Growth {
    /// `lpad(s, n[, fill])`, `rpad`: n characters (at most 4 bytes each, counted as 1: the
    /// cap is on what was asked for).
    PadTo,
    /// `repeat(s, n)`: |s| × n.
    Repeat,
    /// `concat(a, b, …)`: the sum of the parts.
    Concat,
    /// `concat_ws(sep, a, b, …)`: the parts and a separator between each two.
    ConcatWs,
    /// `array_repeat(element, n)`: |element| × n.
    ArrayRepeat,
    /// `range(start, stop[, step])`: (stop - start) / step elements; `generate_series` one more.
    Series { inclusive: bool },
}

const CAPPED: &[(&str, Growth)] = &[
    ("lpad", Growth::PadTo),
    ("rpad", Growth::PadTo),
    ("repeat", Growth::Repeat),
    ("concat", Growth::Concat),
    ("concat_ws", Growth::ConcatWs),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Series { inclusive: false }),
    ("generate_series", Growth::Series { inclusive: true }),
];

/// Replaces the built-ins [`CAPPED`] names (and their aliases) in `context` by capped ones.
pub(crate) fn cap_functions(context: &SessionContext, caps: ValueCaps) {
    let state = context.state();
    let builtins = state.scalar_functions();
    for (name, growth) in CAPPED {
        if let Some(inner) = builtins.get(*name) {
            context.register_udf(ScalarUDF::new_from_impl(Capped {
                inner: Arc::clone(inner),
                growth: *growth,
                caps,
            }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Capped {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    caps: ValueCaps,
}

fn refused(reason: String) -> DataFusionError {
    DataFusionError::External(Box::new(AnalyticsError::SqlLimit(reason)))
}

/// One argument, row by row (a scalar repeats over every row).
fn rows_of(arg: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    arg.to_array(rows.max(1))
}

/// Each row's integer (nulls and negatives count as 0).
fn counts(arg: &ColumnarValue, rows: usize) -> Result<Vec<u64>> {
    let array = rows_of(arg, rows)?;
    let array = datafusion::arrow::compute::cast(&array, &DataType::Int64)?;
    Ok(array
        .as_primitive::<Int64Type>()
        .iter()
        .map(|n| n.map_or(0, |n| n.max(0) as u64))
        .collect())
}

/// Each row's size in bytes: a string's length, a list's elements × 8, a number's width.
fn sizes(arg: &ColumnarValue, rows: usize) -> Result<Vec<u64>> {
    let array = rows_of(arg, rows)?;
    let len = array.len();
    let lengths: Vec<u64> = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(byte_len).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(byte_len).collect(),
        DataType::Utf8View => array.as_string_view().iter().map(byte_len).collect(),
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            (0..len).map(|i| list.value_length(i) as u64 * 8).collect()
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            (0..len).map(|i| list.value_length(i) as u64 * 8).collect()
        }
        other => {
            let width = other.primitive_width().unwrap_or(16) as u64;
            vec![width; len]
        }
    };
    Ok(lengths)
}

fn byte_len(value: Option<&str>) -> u64 {
    value.map_or(0, |v| v.len() as u64)
}

/// Each row's element count of `range`/`generate_series` on integers; other types (dates
/// with intervals) are not estimated.
fn series_lengths(args: &[ColumnarValue], rows: usize, inclusive: bool) -> Result<Vec<u64>> {
    let integer = |arg: &ColumnarValue| arg.data_type() == DataType::Int64;
    if !args.iter().all(integer) {
        return Ok(vec![0; rows.max(1)]);
    }
    let ints = |arg: &ColumnarValue| -> Result<Vec<Option<i64>>> {
        let array = rows_of(arg, rows)?;
        Ok(array.as_primitive::<Int64Type>().iter().collect())
    };
    let (starts, stops, steps) = match args {
        [stop] => (
            vec![Some(0); rows.max(1)],
            ints(stop)?,
            vec![Some(1); rows.max(1)],
        ),
        [start, stop] => (ints(start)?, ints(stop)?, vec![Some(1); rows.max(1)]),
        [start, stop, step, ..] => (ints(start)?, ints(stop)?, ints(step)?),
        [] => return Ok(vec![0; rows.max(1)]),
    };
    Ok(starts
        .iter()
        .zip(&stops)
        .zip(&steps)
        .map(|((start, stop), step)| match (start, stop, step) {
            (Some(start), Some(stop), Some(step)) if *step != 0 => {
                let span = (i128::from(*stop) - i128::from(*start)) / i128::from(*step);
                let elements = if span < 0 {
                    0
                } else {
                    span + i128::from(inclusive)
                };
                u64::try_from(elements).unwrap_or(u64::MAX)
            }
            _ => 0,
        })
        .collect())
}

impl Capped {
    /// The bytes each row's result would take.
    fn result_sizes(&self, args: &[ColumnarValue], rows: usize) -> Result<Vec<u64>> {
        let per_row = |values: Vec<Vec<u64>>| -> Vec<u64> {
            let rows = values.first().map_or(0, Vec::len);
            (0..rows)
                .map(|row| {
                    values
                        .iter()
                        .map(|v| v[row])
                        .fold(0u64, u64::saturating_add)
                })
                .collect()
        };
        Ok(match (self.growth, args) {
            (Growth::PadTo, [_, length, ..]) => counts(length, rows)?,
            (Growth::Repeat, [text, times, ..]) | (Growth::ArrayRepeat, [text, times, ..]) => {
                let sizes = sizes(text, rows)?;
                let times = counts(times, rows)?;
                sizes
                    .iter()
                    .zip(&times)
                    .map(|(size, times)| size.max(&1).saturating_mul(*times))
                    .collect()
            }
            (Growth::Concat, parts) => per_row(
                parts
                    .iter()
                    .map(|p| sizes(p, rows))
                    .collect::<Result<_>>()?,
            ),
            (Growth::ConcatWs, [separator, parts @ ..]) => {
                let mut all = parts
                    .iter()
                    .map(|p| sizes(p, rows))
                    .collect::<Result<Vec<_>>>()?;
                let separators = sizes(separator, rows)?
                    .into_iter()
                    .map(|s| s.saturating_mul(parts.len().saturating_sub(1) as u64))
                    .collect();
                all.push(separators);
                per_row(all)
            }
            (Growth::Series { inclusive }, args) => series_lengths(args, rows, inclusive)?
                .into_iter()
                .map(|n| n.saturating_mul(8))
                .collect(),
            _ => Vec::new(),
        })
    }

    fn check(&self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        let sizes = self.result_sizes(args, rows)?;
        let largest = sizes.iter().copied().max().unwrap_or(0);
        if largest > self.caps.max_value_bytes as u64 {
            return Err(refused(format!(
                "{} would make a value of {largest} bytes; one value may hold {}",
                self.inner.name(),
                self.caps.max_value_bytes
            )));
        }
        let total = sizes.iter().copied().fold(0u64, u64::saturating_add);
        if total > self.caps.max_call_bytes as u64 {
            return Err(refused(format!(
                "{} would make {total} bytes for {rows} rows; the query may use {}",
                self.inner.name(),
                self.caps.max_call_bytes
            )));
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    // `simplify` is left at its default on purpose: the built-ins' rewrites would put the
    // uncapped function back into the plan.

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> ValueCaps {
        ValueCaps {
            max_value_bytes: 1 << 20,
            max_call_bytes: 64 << 20,
        }
    }

    async fn run(sql: &str) -> std::result::Result<usize, DataFusionError> {
        let context = SessionContext::new();
        cap_functions(&context, caps());
        let batches = context.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    fn is_sql_limit(error: &DataFusionError) -> bool {
        matches!(error.find_root(), DataFusionError::External(inner)
            if matches!(inner.downcast_ref::<AnalyticsError>(), Some(AnalyticsError::SqlLimit(_))))
    }

    #[tokio::test]
    async fn growing_functions_past_their_caps_are_refused() {
        for sql in [
            "SELECT length(lpad('x', 400000000))",
            "SELECT length(rpad('x', 2000000, 'ab'))",
            "SELECT length(repeat('abcd', 1000000))",
            "SELECT cardinality(array_repeat(1, 100000000))",
            "SELECT cardinality(range(1, 10000000000))",
            "SELECT cardinality(generate_series(1, 10000000000))",
            "SELECT length(concat(repeat('a', 1000000), repeat('b', 1000000)))",
            "SELECT length(concat_ws(',', repeat('a', 600000), repeat('b', 600000)))",
            // Each value under the cap, the batch far over the query's memory.
            "SELECT length(lpad(CAST(value AS VARCHAR), 1000000)) FROM generate_series(1, 100000)",
        ] {
            let error = run(sql).await.expect_err(sql);
            assert!(is_sql_limit(&error), "{sql}: {error}");
        }
    }

    #[tokio::test]
    async fn the_same_functions_under_their_caps_answer() {
        for sql in [
            "SELECT length(lpad('x', 1000))",
            "SELECT length(repeat('ab', 1000))",
            "SELECT cardinality(array_repeat('x', 1000))",
            "SELECT cardinality(range(1, 1000))",
            "SELECT concat('a', 'b', NULL, 'c')",
            "SELECT concat_ws('-', 'a', 'b')",
            "SELECT length(lpad(CAST(value AS VARCHAR), 10)) FROM generate_series(1, 100000)",
        ] {
            assert!(run(sql).await.is_ok(), "{sql}");
        }
    }
}
