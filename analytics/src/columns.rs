//! A table's columns declared once, each by its name, its type and how a row fills it: the
//! same declaration gives the table's Arrow schema (declared over no rows) and its record
//! batches, so the two cannot drift apart and the column order is written in one place.

use std::sync::Arc;

use arrow_array::builder::{FixedSizeBinaryBuilder, ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{ArrowError, Field, Schema, SchemaRef};

/// A table of the lake as its files hold it: its name, its columns and the columns its
/// rows are sorted by. Log-fed and sink-fed tables add how their rows are found.
pub trait TableLayout {
    type Row;
    const NAME: &'static str;
    /// Raised whenever a column goes or is coarsened, so that files written before are
    /// rewritten rather than served (see "Layouts" in `lake.rs`).
    const LAYOUT: u32 = 1;
    /// Columns an earlier layout held to the microsecond that this one holds to the hour:
    /// (old name, new name). Rewriting an old file truncates them; columns the layout no
    /// longer has are left behind.
    const HOURS_FROM: &'static [(&'static str, &'static str)] = &[];
    /// The table's columns over `rows`, all of date `day`.
    fn columns<'r>(rows: &'r [&'r Self::Row], day: i32) -> Columns<'r, Self::Row>;
    fn schema() -> SchemaRef {
        Self::columns(&[], 0).schema()
    }
    fn sort_columns() -> Vec<usize>;
}

/// The columns of a table over `rows`, in the order they are declared.
pub struct Columns<'r, R> {
    rows: &'r [&'r R],
    fields: Vec<Field>,
    arrays: Vec<ArrayRef>,
}

impl<'r, R> Columns<'r, R> {
    pub(crate) fn of(rows: &'r [&'r R]) -> Self {
        Self {
            rows,
            fields: Vec::new(),
            arrays: Vec::new(),
        }
    }

    pub(crate) fn schema(self) -> SchemaRef {
        Arc::new(Schema::new(self.fields))
    }

    pub(crate) fn batch(self) -> Result<RecordBatch, ArrowError> {
        RecordBatch::try_new(Arc::new(Schema::new(self.fields)), self.arrays)
    }

    fn column(mut self, name: &str, nullable: bool, array: ArrayRef) -> Self {
        self.fields
            .push(Field::new(name, array.data_type().clone(), nullable));
        self.arrays.push(array);
        self
    }

    pub(crate) fn text<S: AsRef<str>>(self, name: &str, value: impl Fn(&'r R) -> S) -> Self {
        let array = StringArray::from_iter_values(self.rows.iter().map(|row| value(row)));
        self.column(name, false, Arc::new(array))
    }

    pub(crate) fn optional_text<S: AsRef<str>>(
        self,
        name: &str,
        value: impl Fn(&'r R) -> Option<S>,
    ) -> Self {
        let array: StringArray = self.rows.iter().map(|row| value(row)).collect();
        self.column(name, true, Arc::new(array))
    }

    /// A list of labels per row (its items nullable, as Arrow's list builder declares them).
    pub(crate) fn text_list(self, name: &str, values: impl Fn(&'r R) -> &'r [String]) -> Self {
        let mut lists = ListBuilder::new(StringBuilder::new());
        for row in self.rows {
            for item in values(row) {
                lists.values().append_value(item);
            }
            lists.append(true);
        }
        self.column(name, false, Arc::new(lists.finish()))
    }

    pub(crate) fn fixed_binary<const N: usize>(
        self,
        name: &str,
        value: impl Fn(&'r R) -> [u8; N],
    ) -> Self {
        let mut builder = FixedSizeBinaryBuilder::with_capacity(self.rows.len(), N as i32);
        for row in self.rows {
            builder
                .append_value(value(row))
                .expect("an [u8; N] has the builder's N bytes");
        }
        self.column(name, false, Arc::new(builder.finish()))
    }

    pub(crate) fn int32(self, name: &str, value: impl Fn(&'r R) -> i32) -> Self {
        let array = Int32Array::from_iter_values(self.rows.iter().map(|row| value(row)));
        self.column(name, false, Arc::new(array))
    }

    pub(crate) fn optional_int32(self, name: &str, value: impl Fn(&'r R) -> Option<i32>) -> Self {
        let array: Int32Array = self.rows.iter().map(|row| value(row)).collect();
        self.column(name, true, Arc::new(array))
    }

    pub(crate) fn int64(self, name: &str, value: impl Fn(&'r R) -> i64) -> Self {
        let array = Int64Array::from_iter_values(self.rows.iter().map(|row| value(row)));
        self.column(name, false, Arc::new(array))
    }

    pub(crate) fn float64(self, name: &str, value: impl Fn(&'r R) -> f64) -> Self {
        let array = Float64Array::from_iter_values(self.rows.iter().map(|row| value(row)));
        self.column(name, false, Arc::new(array))
    }

    pub(crate) fn optional_float64(self, name: &str, value: impl Fn(&'r R) -> Option<f64>) -> Self {
        let array: Float64Array = self.rows.iter().map(|row| value(row)).collect();
        self.column(name, true, Arc::new(array))
    }

    /// Microseconds since the Unix epoch, in UTC.
    pub(crate) fn utc_micros(self, name: &str, value: impl Fn(&'r R) -> i64) -> Self {
        let array =
            TimestampMicrosecondArray::from_iter_values(self.rows.iter().map(|row| value(row)))
                .with_timezone("UTC");
        self.column(name, false, Arc::new(array))
    }

    /// A time truncated to its hour (UTC), so that the column cannot tell apart rows of one
    /// hour by when they happened.
    pub(crate) fn utc_hour(self, name: &str, value: impl Fn(&'r R) -> i64) -> Self {
        self.utc_micros(name, |row| start_of_hour(value(row)))
    }

    /// Days since the Unix epoch.
    pub(crate) fn date32(self, name: &str, value: impl Fn(&'r R) -> i32) -> Self {
        let array = Date32Array::from_iter_values(self.rows.iter().map(|row| value(row)));
        self.column(name, false, Arc::new(array))
    }
}

pub(crate) const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// The start of the hour (UTC) holding `micros`.
pub(crate) fn start_of_hour(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR
}
