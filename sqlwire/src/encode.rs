//! Arrow columns as PostgreSQL values: the type each column is announced as, and each cell
//! in text format (what psql and the simple protocol use) or binary format (what drivers
//! such as tokio-postgres and JDBC ask for in the extended protocol).
//!
//! Cells are written straight into the `DataRow` buffer instead of through pgwire's
//! `ToSql` encoders: those need chrono and rust_decimal features, and they know nothing of
//! Arrow arrays.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::{Array, ArrayRef, PrimitiveArray, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{ArrowError, DataType, Schema, TimeUnit};
use bytes::{BufMut, BytesMut};
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::messages::data::DataRow;

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's binary epoch).
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS as i64 * MICROS_PER_DAY;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The PostgreSQL type an Arrow column is announced as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
    /// Exact numbers Arrow has and PostgreSQL's integers do not hold: decimals, `UInt64`.
    Numeric,
    /// Anything else (lists, structs, intervals, times…): Arrow's own rendering, as TEXT.
    Display,
}

impl Kind {
    fn of(data_type: &DataType) -> Self {
        match data_type {
            DataType::Boolean => Self::Bool,
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => Self::Int2,
            DataType::Int32 | DataType::UInt16 => Self::Int4,
            DataType::Int64 | DataType::UInt32 => Self::Int8,
            DataType::UInt64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => Self::Numeric,
            DataType::Float16 | DataType::Float32 => Self::Float4,
            DataType::Float64 => Self::Float8,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Self::Text,
            DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_) => Self::Bytea,
            DataType::Date32 | DataType::Date64 => Self::Date,
            DataType::Timestamp(_, Some(_)) => Self::TimestampTz,
            DataType::Timestamp(_, None) => Self::Timestamp,
            DataType::Dictionary(_, values) => Self::of(values),
            _ => Self::Display,
        }
    }

    fn pg_type(self) -> Type {
        match self {
            Self::Bool => Type::BOOL,
            Self::Int2 => Type::INT2,
            Self::Int4 => Type::INT4,
            Self::Int8 => Type::INT8,
            Self::Float4 => Type::FLOAT4,
            Self::Float8 => Type::FLOAT8,
            Self::Text | Self::Display => Type::TEXT,
            Self::Bytea => Type::BYTEA,
            Self::Date => Type::DATE,
            Self::Timestamp => Type::TIMESTAMP,
            Self::TimestampTz => Type::TIMESTAMPTZ,
            Self::Numeric => Type::NUMERIC,
        }
    }

    /// `pg_type.typlen`: some drivers size their buffers by it.
    fn type_size(self) -> i16 {
        match self {
            Self::Bool => 1,
            Self::Int2 => 2,
            Self::Int4 | Self::Float4 | Self::Date => 4,
            Self::Int8 | Self::Float8 | Self::Timestamp | Self::TimestampTz => 8,
            Self::Text | Self::Display | Self::Bytea | Self::Numeric => -1,
        }
    }

    /// The Arrow type a column is cast to before encoding, so that one array type per kind
    /// remains (`None`: encoded as it comes).
    fn normal_type(self, data_type: &DataType) -> Option<DataType> {
        let values = match data_type {
            DataType::Dictionary(_, values) => values.as_ref(),
            other => other,
        };
        match self {
            Self::Int2 => Some(DataType::Int16),
            Self::Int4 => Some(DataType::Int32),
            Self::Int8 => Some(DataType::Int64),
            Self::Float4 => Some(DataType::Float32),
            Self::Float8 => Some(DataType::Float64),
            Self::Date => Some(DataType::Date32),
            Self::Timestamp | Self::TimestampTz => match values {
                DataType::Timestamp(_, tz) => {
                    Some(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
                }
                _ => None,
            },
            Self::Bool | Self::Text | Self::Bytea => {
                matches!(data_type, DataType::Dictionary(..)).then(|| values.clone())
            }
            Self::Numeric | Self::Display => None,
        }
    }
}

/// The PostgreSQL type a value of this Arrow type is sent as (what a result column or an
/// inferred parameter is announced as).
pub(crate) fn pg_type(data_type: &DataType) -> Type {
    Kind::of(data_type).pg_type()
}

/// The wire format of a portal's column `index` (text when the client's list is short).
pub(crate) fn format_of(format: &Format, index: usize) -> FieldFormat {
    match format {
        Format::UnifiedText => FieldFormat::Text,
        Format::UnifiedBinary => FieldFormat::Binary,
        Format::Individual(codes) => codes
            .get(index)
            .map_or(FieldFormat::Text, |code| FieldFormat::from(*code)),
    }
}

/// The `RowDescription` of a result with this schema.
pub(crate) fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let kind = Kind::of(field.data_type());
            FieldInfo::new(
                field.name().clone(),
                None,
                None,
                kind.pg_type(),
                format_of(format, index),
            )
            .with_type_size(kind.type_size())
        })
        .collect()
}

/// A one-column TEXT result (`SHOW`).
pub(crate) fn text_field(name: &str) -> FieldInfo {
    FieldInfo::new(name.to_owned(), None, None, Type::TEXT, FieldFormat::Text)
        .with_type_size(Kind::Text.type_size())
}

/// A row of TEXT values.
pub(crate) fn text_row(values: &[&str]) -> DataRow {
    let mut buffer = BytesMut::new();
    for value in values {
        put_value(&mut buffer, value.as_bytes());
    }
    DataRow::new(buffer, values.len() as i16)
}

/// Encodes a query's batches as `DataRow`s, in the formats the client asked for.
#[derive(Clone, Debug)]
pub(crate) struct RowEncoder {
    columns: Arc<Vec<(Kind, FieldFormat)>>,
}

impl RowEncoder {
    pub(crate) fn new(fields: &[FieldInfo], schema: &Schema) -> Self {
        let columns = schema
            .fields()
            .iter()
            .zip(fields)
            .map(|(field, info)| (Kind::of(field.data_type()), info.format()))
            .collect();
        Self {
            columns: Arc::new(columns),
        }
    }

    pub(crate) fn encode(&self, batch: &RecordBatch) -> Result<Vec<DataRow>, ArrowError> {
        let arrays = batch
            .columns()
            .iter()
            .zip(self.columns.iter())
            .map(
                |(array, (kind, _))| match kind.normal_type(array.data_type()) {
                    Some(target) if &target != array.data_type() => {
                        arrow_cast::cast(array.as_ref(), &target)
                    }
                    _ => Ok(Arc::clone(array)),
                },
            )
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        let options = FormatOptions::default();
        let cells = arrays
            .iter()
            .zip(self.columns.iter())
            .map(|(array, &(kind, format))| Cells::new(array.as_ref(), kind, format, &options))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows = Vec::with_capacity(batch.num_rows());
        let mut buffer = BytesMut::with_capacity(64 * cells.len().max(1));
        let mut scratch = String::new();
        for row in 0..batch.num_rows() {
            for cell in &cells {
                cell.put(row, &mut buffer, &mut scratch)?;
            }
            rows.push(DataRow::new(buffer.split(), cells.len() as i16));
        }
        Ok(rows)
    }
}

/// One column of a batch, downcast once.
struct Cells<'a> {
    array: &'a dyn Array,
    format: FieldFormat,
    values: Values<'a>,
}

enum Values<'a> {
    Bool(&'a arrow_array::BooleanArray),
    Int2(&'a PrimitiveArray<Int16Type>),
    Int4(&'a PrimitiveArray<Int32Type>),
    Int8(&'a PrimitiveArray<Int64Type>),
    Float4(&'a PrimitiveArray<Float32Type>),
    Float8(&'a PrimitiveArray<Float64Type>),
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    Utf8View(&'a arrow_array::StringViewArray),
    Binary(&'a arrow_array::BinaryArray),
    LargeBinary(&'a arrow_array::LargeBinaryArray),
    BinaryView(&'a arrow_array::BinaryViewArray),
    FixedBinary(&'a arrow_array::FixedSizeBinaryArray),
    Date(&'a PrimitiveArray<Date32Type>),
    Timestamp(&'a PrimitiveArray<TimestampMicrosecondType>, bool),
    Numeric(ArrayFormatter<'a>),
    Display(ArrayFormatter<'a>),
}

impl<'a> Cells<'a> {
    fn new(
        array: &'a dyn Array,
        kind: Kind,
        format: FieldFormat,
        options: &FormatOptions<'a>,
    ) -> Result<Self, ArrowError> {
        let values = match (kind, array.data_type()) {
            (Kind::Bool, DataType::Boolean) => Values::Bool(array.as_boolean()),
            (Kind::Int2, DataType::Int16) => Values::Int2(array.as_primitive()),
            (Kind::Int4, DataType::Int32) => Values::Int4(array.as_primitive()),
            (Kind::Int8, DataType::Int64) => Values::Int8(array.as_primitive()),
            (Kind::Float4, DataType::Float32) => Values::Float4(array.as_primitive()),
            (Kind::Float8, DataType::Float64) => Values::Float8(array.as_primitive()),
            (Kind::Text, DataType::Utf8) => Values::Utf8(array.as_string()),
            (Kind::Text, DataType::LargeUtf8) => Values::LargeUtf8(array.as_string()),
            (Kind::Text, DataType::Utf8View) => Values::Utf8View(array.as_string_view()),
            (Kind::Bytea, DataType::Binary) => Values::Binary(array.as_binary()),
            (Kind::Bytea, DataType::LargeBinary) => Values::LargeBinary(array.as_binary()),
            (Kind::Bytea, DataType::BinaryView) => Values::BinaryView(array.as_binary_view()),
            (Kind::Bytea, DataType::FixedSizeBinary(_)) => {
                Values::FixedBinary(array.as_fixed_size_binary())
            }
            (Kind::Date, DataType::Date32) => Values::Date(array.as_primitive()),
            (Kind::Timestamp, DataType::Timestamp(TimeUnit::Microsecond, _))
            | (Kind::TimestampTz, DataType::Timestamp(TimeUnit::Microsecond, _)) => {
                Values::Timestamp(array.as_primitive(), kind == Kind::TimestampTz)
            }
            (Kind::Numeric, _) => Values::Numeric(ArrayFormatter::try_new(array, options)?),
            (Kind::Display, _) => Values::Display(ArrayFormatter::try_new(array, options)?),
            (kind, other) => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "a {other} column cannot be sent as {}",
                    kind.pg_type()
                )));
            }
        };
        Ok(Self {
            array,
            format,
            values,
        })
    }

    /// Appends the cell's length and bytes (or SQL NULL) to a `DataRow` body.
    fn put(&self, row: usize, out: &mut BytesMut, text: &mut String) -> Result<(), ArrowError> {
        if self.array.is_null(row) {
            out.put_i32(-1);
            return Ok(());
        }
        let binary = self.format == FieldFormat::Binary;
        text.clear();
        // Arms that write the cell themselves; the others leave its text in `text`.
        match &self.values {
            Values::Bool(a) => {
                let v = a.value(row);
                let value: &[u8] = match (binary, v) {
                    (true, _) => &[v as u8],
                    (false, true) => b"t",
                    (false, false) => b"f",
                };
                put_value(out, value);
            }
            Values::Int2(a) if binary => put_value(out, &a.value(row).to_be_bytes()),
            Values::Int4(a) if binary => put_value(out, &a.value(row).to_be_bytes()),
            Values::Int8(a) if binary => put_value(out, &a.value(row).to_be_bytes()),
            Values::Float4(a) if binary => put_value(out, &a.value(row).to_be_bytes()),
            Values::Float8(a) if binary => put_value(out, &a.value(row).to_be_bytes()),
            // TEXT's binary form is its UTF-8 bytes too.
            Values::Utf8(a) => put_value(out, a.value(row).as_bytes()),
            Values::LargeUtf8(a) => put_value(out, a.value(row).as_bytes()),
            Values::Utf8View(a) => put_value(out, a.value(row).as_bytes()),
            Values::Binary(a) => put_bytea(out, a.value(row), binary, text),
            Values::LargeBinary(a) => put_bytea(out, a.value(row), binary, text),
            Values::BinaryView(a) => put_bytea(out, a.value(row), binary, text),
            Values::FixedBinary(a) => put_bytea(out, a.value(row), binary, text),
            Values::Date(a) if binary => {
                let days = a.value(row).wrapping_sub(PG_EPOCH_DAYS);
                put_value(out, &days.to_be_bytes());
            }
            Values::Timestamp(a, _) if binary => {
                let micros = a.value(row).saturating_sub(PG_EPOCH_MICROS);
                put_value(out, &micros.to_be_bytes());
            }
            Values::Numeric(f) if binary => {
                write!(text, "{}", f.value(row)).map_err(fmt_error)?;
                let start = out.len();
                out.put_i32(0);
                numeric_binary(text, out)?;
                patch_length(out, start);
            }
            Values::Int2(a) => put_text(out, text, a.value(row)),
            Values::Int4(a) => put_text(out, text, a.value(row)),
            Values::Int8(a) => put_text(out, text, a.value(row)),
            Values::Float4(a) => {
                float_text(text, f64::from(a.value(row)), 6);
                put_value(out, text.as_bytes());
            }
            Values::Float8(a) => {
                float_text(text, a.value(row), 15);
                put_value(out, text.as_bytes());
            }
            Values::Date(a) => {
                date_text(text, i64::from(a.value(row)));
                put_value(out, text.as_bytes());
            }
            Values::Timestamp(a, with_zone) => {
                timestamp_text(text, a.value(row), *with_zone);
                put_value(out, text.as_bytes());
            }
            // Display columns are announced as TEXT, whose binary form is the same UTF-8.
            Values::Numeric(f) | Values::Display(f) => {
                write!(text, "{}", f.value(row)).map_err(fmt_error)?;
                put_value(out, text.as_bytes());
            }
        }
        Ok(())
    }
}

fn put_text(out: &mut BytesMut, text: &mut String, value: impl std::fmt::Display) {
    write_display(text, value);
    put_value(out, text.as_bytes());
}

fn fmt_error(error: std::fmt::Error) -> ArrowError {
    ArrowError::ComputeError(format!("formatting a value: {error}"))
}

fn write_display(text: &mut String, value: impl std::fmt::Display) {
    // Writing into a String cannot fail.
    let _ = write!(text, "{value}");
}

fn put_value(out: &mut BytesMut, value: &[u8]) {
    out.put_i32(value.len() as i32);
    out.put_slice(value);
}

fn patch_length(out: &mut BytesMut, start: usize) {
    let length = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&length.to_be_bytes());
}

fn put_bytea(out: &mut BytesMut, bytes: &[u8], binary: bool, text: &mut String) {
    if binary {
        put_value(out, bytes);
        return;
    }
    text.push_str("\\x");
    for byte in bytes {
        write_display(text, format_args!("{byte:02x}"));
    }
    put_value(out, text.as_bytes());
}

/// PostgreSQL's float output (shortest exact digits, as with `extra_float_digits = 1`):
/// plain notation, but an exponent below 1e-4 or from 10^`digits` up (`1e+20`, `1e-05`).
fn float_text(text: &mut String, value: f64, digits: i32) {
    if value.is_nan() {
        text.push_str("NaN");
    } else if value.is_infinite() {
        text.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
    } else if value == 0.0 {
        text.push_str(if value.is_sign_negative() { "-0" } else { "0" });
    } else {
        let exponent = value.abs().log10().floor() as i32;
        if (-4..digits).contains(&exponent) {
            write_display(text, value);
        } else {
            // Rust's `{:e}` is shortest-exact too, as `1.5e20` / `1e-5`.
            let scientific = format!("{value:e}");
            let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
            let exponent: i32 = exponent.parse().unwrap_or(0);
            let sign = if exponent < 0 { '-' } else { '+' };
            write_display(
                text,
                format_args!("{mantissa}e{sign}{:02}", exponent.unsigned_abs()),
            );
        }
    }
}

/// Gregorian (year, month, day) of a day count from 1970-01-01 (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD`; returns whether the year is BC (PostgreSQL appends ` BC` at the very end).
fn put_date(text: &mut String, days: i64) -> bool {
    let (year, month, day) = civil(days);
    let bc = year <= 0;
    let year = if bc { 1 - year } else { year };
    write_display(text, format_args!("{year:04}-{month:02}-{day:02}"));
    bc
}

fn date_text(text: &mut String, days: i64) {
    if put_date(text, days) {
        text.push_str(" BC");
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+00]`, in UTC (the session's TimeZone).
fn timestamp_text(text: &mut String, micros: i64, with_zone: bool) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let of_day = micros.rem_euclid(MICROS_PER_DAY);
    let bc = put_date(text, days);
    let seconds = of_day / 1_000_000;
    let fraction = of_day % 1_000_000;
    write_display(
        text,
        format_args!(
            " {:02}:{:02}:{:02}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        ),
    );
    if fraction != 0 {
        let digits = format!("{fraction:06}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    if with_zone {
        text.push_str("+00");
    }
    if bc {
        text.push_str(" BC");
    }
}

/// NUMERIC's binary form from its decimal text: base-10000 digits around the decimal point.
fn numeric_binary(text: &str, out: &mut BytesMut) -> Result<(), ArrowError> {
    const POSITIVE: u16 = 0x0000;
    const NEGATIVE: u16 = 0x4000;
    let invalid = || ArrowError::ComputeError(format!("{text:?} is not a decimal number"));
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let dscale = u16::try_from(fraction.len()).map_err(|_| invalid())?;
    let whole = whole.trim_start_matches('0');
    let mut padded = "0".repeat((4 - whole.len() % 4) % 4);
    padded.push_str(whole);
    let whole_groups = padded.len() / 4;
    padded.push_str(fraction);
    padded.push_str(&"0".repeat((4 - fraction.len() % 4) % 4));
    let mut groups: Vec<i16> = padded
        .as_bytes()
        .chunks(4)
        .map(|chunk| {
            chunk
                .iter()
                .fold(0i16, |n, digit| n * 10 + i16::from(digit - b'0'))
        })
        .collect();
    let mut weight = whole_groups as i32 - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= leading as i32;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign = if negative && !groups.is_empty() {
        NEGATIVE
    } else {
        POSITIVE
    };
    out.put_i16(i16::try_from(groups.len()).map_err(|_| invalid())?);
    out.put_i16(i16::try_from(weight).map_err(|_| invalid())?);
    out.put_u16(sign);
    out.put_u16(dscale);
    for group in groups {
        out.put_i16(group);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(value: f64, digits: i32) -> String {
        let mut text = String::new();
        float_text(&mut text, value, digits);
        text
    }

    #[test]
    fn floats_print_as_postgresql_does() {
        assert_eq!(float(1.0, 15), "1");
        assert_eq!(float(0.1, 15), "0.1");
        assert_eq!(float(1e20, 15), "1e+20");
        assert_eq!(float(1e14, 15), "100000000000000");
        assert_eq!(float(1e15, 15), "1e+15");
        assert_eq!(float(0.0001, 15), "0.0001");
        assert_eq!(float(0.00001, 15), "1e-05");
        assert_eq!(float(-2.5e-7, 15), "-2.5e-07");
        assert_eq!(float(f64::NAN, 15), "NaN");
        assert_eq!(float(f64::NEG_INFINITY, 15), "-Infinity");
        assert_eq!(float(1e6, 6), "1e+06");
    }

    #[test]
    fn timestamps_print_as_postgresql_does() {
        let mut text = String::new();
        timestamp_text(&mut text, 1_780_272_000_000_000, true);
        assert_eq!(text, "2026-06-01 00:00:00+00");
        text.clear();
        timestamp_text(&mut text, 1_780_272_000_000_000 + 3_723_500_000, false);
        assert_eq!(text, "2026-06-01 01:02:03.5");
        text.clear();
        timestamp_text(&mut text, -1, true);
        assert_eq!(text, "1969-12-31 23:59:59.999999+00");
        text.clear();
        date_text(&mut text, -719_163);
        assert_eq!(text, "0001-12-31 BC");
    }

    fn numeric(text: &str) -> Vec<u8> {
        let mut out = BytesMut::new();
        numeric_binary(text, &mut out).unwrap();
        out.to_vec()
    }

    #[test]
    fn numerics_encode_in_base_10000() {
        // ndigits, weight, sign, dscale, then the digits.
        assert_eq!(
            numeric("12345.678"),
            [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c]
        );
        assert_eq!(
            numeric("-0.00001"),
            [0, 1, 0xff, 0xfe, 0x40, 0, 0, 5, 0x03, 0xe8]
        );
        assert_eq!(numeric("0"), [0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            numeric("18446744073709551615"),
            [
                0, 5, 0, 4, 0, 0, 0, 0, 0x07, 0x34, 0x1a, 0x58, 0x02, 0xe1, 0x03, 0xbb, 0x06, 0x4f
            ]
        );
        assert!(numeric_binary("1e5", &mut BytesMut::new()).is_err());
    }
}
