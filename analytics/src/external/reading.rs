//! What the importers share to read a file: its text, its CSV fields, the elements of a JSON
//! array one at a time, and the progress reported as they go.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};

use crate::AnalyticsError;
use crate::columns::TableLayout;
use crate::lake::parquet_error;

/// What a format's parser hands back: the table's rows, in the table's order, and what it
/// left out.
pub(crate) struct Parsed {
    pub batch: RecordBatch,
    pub rows_skipped: u64,
    pub rows_unmapped: u64,
}

impl Parsed {
    /// `rows`, already in the table's order, as one batch of `Table`; `skipped` records were
    /// left out, and the rows without a region are counted.
    pub(crate) fn of<Table: TableLayout>(
        rows: &[Table::Row],
        region: impl Fn(&Table::Row) -> Option<&Arc<str>>,
        skipped: u64,
    ) -> Result<Self, AnalyticsError> {
        let rows_unmapped = rows.iter().filter(|row| region(row).is_none()).count() as u64;
        let refs: Vec<&Table::Row> = rows.iter().collect();
        let batch = Table::columns(&refs, 0)
            .batch()
            .map_err(|e| parquet_error(Table::NAME, e))?;
        Ok(Self {
            batch,
            rows_skipped: skipped,
            rows_unmapped,
        })
    }
}

/// Rows without a region after every region, as the lake's files declare their order
/// (`nulls_first` false) and DataFusion trusts it.
pub(crate) fn region_order(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// How often the caller hears how far the parse got.
pub(crate) const PROGRESS_EVERY_ROWS: u64 = 10_000;

/// The records parsed so far, told to the caller every [`PROGRESS_EVERY_ROWS`].
pub(crate) struct Progress<'p> {
    callback: &'p mut dyn FnMut(u64),
    pub rows: u64,
}

impl<'p> Progress<'p> {
    pub fn new(callback: &'p mut dyn FnMut(u64)) -> Self {
        Self { callback, rows: 0 }
    }

    pub fn row(&mut self) {
        self.rows += 1;
        if self.rows.is_multiple_of(PROGRESS_EVERY_ROWS) {
            (self.callback)(self.rows);
        }
    }

    /// The last count, so that a caller showing progress ends at the total.
    pub fn finish(&mut self) {
        if !self.rows.is_multiple_of(PROGRESS_EVERY_ROWS) {
            (self.callback)(self.rows);
        }
    }
}

/// The file as text (a leading byte-order mark dropped, as spreadsheet exports add one).
pub(crate) fn text_of<'b>(
    bytes: &'b [u8],
    expected: &'static str,
) -> Result<&'b str, AnalyticsError> {
    let text = std::str::from_utf8(bytes).map_err(|e| AnalyticsError::ImportFormat {
        expected,
        found: format!("not UTF-8 text (byte {} is not)", e.valid_up_to()),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(AnalyticsError::ImportFormat {
            expected,
            found: "an empty file".into(),
        });
    }
    Ok(text)
}

/// The fields of one CSV line (RFC 4180 within a line: a field may be quoted, `""` in it
/// standing for `"`). None of the sources puts a line break inside a field.
pub(crate) fn csv_fields(line: &str) -> Result<Vec<Cow<'_, str>>, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        let (field, after) = match rest.strip_prefix('"') {
            Some(quoted) => quoted_field(quoted).ok_or_else(|| {
                format!("field {} opens a quote it does not close", fields.len() + 1)
            })?,
            None => match rest.find(',') {
                Some(comma) => (Cow::Borrowed(&rest[..comma]), &rest[comma..]),
                None => (Cow::Borrowed(rest), ""),
            },
        };
        fields.push(field);
        if after.is_empty() {
            return Ok(fields);
        }
        rest = after
            .strip_prefix(',')
            .ok_or_else(|| format!("field {} has text after its closing quote", fields.len()))?;
    }
}

/// A quoted field's value (its opening quote already taken) and what follows its closing
/// quote; none if it is not closed. Borrowed unless a `""` has to become `"`.
fn quoted_field(quoted: &str) -> Option<(Cow<'_, str>, &str)> {
    let mut unescaped: Option<String> = None;
    let mut from = 0;
    loop {
        let quote = from + quoted[from..].find('"')?;
        if quoted[quote + 1..].starts_with('"') {
            unescaped
                .get_or_insert_with(String::new)
                .push_str(&quoted[from..=quote]);
            from = quote + 2;
            continue;
        }
        let value = match unescaped {
            Some(mut value) => {
                value.push_str(&quoted[from..quote]);
                Cow::Owned(value)
            }
            None => Cow::Borrowed(&quoted[..quote]),
        };
        return Some((value, &quoted[quote + 1..]));
    }
}

/// Hands each element of a JSON array to a closure as it is read, so a file of a million
/// features never becomes a million `Value`s at once, and a malformed element is an error
/// of that element rather than of the whole file. A null is taken for an empty array.
pub(crate) struct EachElement<'f, F>(pub &'f mut F);

impl<'de, F: FnMut(serde_json::Value)> DeserializeSeed<'de> for EachElement<'_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // Any, not seq: a null (the World Bank's "no data") is an empty array here.
        deserializer.deserialize_any(self)
    }
}

impl<'de, F: FnMut(serde_json::Value)> Visitor<'de> for EachElement<'_, F> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an array")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut elements: A) -> Result<(), A::Error> {
        while let Some(element) = elements.next_element::<serde_json::Value>()? {
            (self.0)(element);
        }
        Ok(())
    }
}

/// A file that does not parse as JSON: not the format, wherever it breaks (a truncated
/// download included), since no record after the break can be read.
pub(crate) fn not_json(expected: &'static str, error: &serde_json::Error) -> AnalyticsError {
    AnalyticsError::ImportFormat {
        expected,
        found: format!(
            "{error} (JSON text line {}, column {})",
            error.line(),
            error.column()
        ),
    }
}

/// A JSON value named for people: `a string`, `an object`, ….
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_unquote_and_keep_commas_inside_quotes() {
        let fields = |line| {
            csv_fields(line)
                .unwrap()
                .into_iter()
                .map(Cow::into_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(fields("a,b,,c"), ["a", "b", "", "c"]);
        assert_eq!(
            fields(r#""Korea, Rep.","KOR","",1.5,"#),
            ["Korea, Rep.", "KOR", "", "1.5", ""]
        );
        assert_eq!(fields(r#""say ""hi""",x"#), [r#"say "hi""#, "x"]);
        assert_eq!(fields(r#""""#), [""]);
        assert_eq!(fields(""), [""]);
        assert!(csv_fields(r#""open,b"#).is_err());
        assert!(csv_fields(r#""a"b,c"#).is_err());
    }
}
