//! What an import of external data says about itself. Kept apart from the importers so
//! that the crate's error, which carries a refused import's report, needs nothing else.

use serde::Serialize;

/// Errors a report lists; the rest are only counted (a file of a million bad lines would
/// otherwise make a report as large as itself).
pub(crate) const MAX_LISTED_ERRORS: usize = 1000;

/// One invalid record of an imported file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// The record's line in a CSV file (1 for the first line, preamble and header
    /// included); in a JSON file the record's index in its array plus one, which the
    /// message says.
    pub line: u64,
    /// `bad_station`, `bad_date`, `bad_value`, `bad_columns`, `duplicate_value`, … (see
    /// each format in `external/`).
    pub code: &'static str,
    pub message: String,
}

/// The outcome of one import, also carried by a refusal
/// ([`AnalyticsError::ImportRefused`](crate::AnalyticsError::ImportRefused)).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImportReport {
    /// `noaa`, `worldbank` or `osm`.
    pub source: &'static str,
    /// `weather_daily`, `indicators` or `regions`.
    pub table: &'static str,
    /// The first 16 hex digits of the file's SHA-256: every row of the import carries it,
    /// and the same bytes are imported once.
    pub import_id: String,
    /// The file's records, valid or not: NOAA a CSV line (one value by_station, one
    /// station-day in a CDO file), World Bank a (country, indicator, year) value (a cell of
    /// the bulk CSV, an observation of the API's JSON), OpenStreetMap a feature.
    pub rows_read: u64,
    /// The table rows the file gives (NOAA: station-days, each holding up to five values),
    /// whether this call wrote them or an earlier one did (`already_imported`); none are
    /// written when the import is refused.
    pub rows_imported: u64,
    /// Of `rows_imported`, those whose source region the map does not name: their
    /// `region` is NULL.
    pub rows_unmapped: u64,
    /// Records left out by rule: NOAA values missing (-9999), failing a quality check or
    /// of an element the table has no column for, and CDO lines with no value left; World
    /// Bank values that are empty or null; OpenStreetMap features that are neither an
    /// administrative boundary nor land use.
    pub rows_skipped: u64,
    /// The first [`MAX_LISTED_ERRORS`] invalid records, in file order.
    pub errors: Vec<RowError>,
    pub errors_total: u64,
    /// The file was imported before (a file of the table names its `import_id`): nothing
    /// was written.
    pub already_imported: bool,
    /// The lake key of the file holding the import (`<table>/import/part-i-<n>-<n>.parquet`):
    /// the one written, or the earlier one when `already_imported`; none when refused.
    pub file: Option<String>,
}

impl ImportReport {
    /// Why an import was refused, for people: how many records are invalid and the first.
    pub fn refusal(&self) -> String {
        let first = self
            .errors
            .first()
            .map(|e| format!("; the first, line {}: {}: {}", e.line, e.code, e.message))
            .unwrap_or_default();
        format!(
            "the {} file was not imported, nothing was written: {} invalid record(s){first} \
             (with skip_invalid the valid records are imported and these reported)",
            self.source, self.errors_total
        )
    }
}

/// The invalid records of a file as its parser meets them.
#[derive(Debug, Default)]
pub(crate) struct RowErrors {
    pub listed: Vec<RowError>,
    pub total: u64,
}

impl RowErrors {
    pub fn push(&mut self, line: u64, code: &'static str, message: impl Into<String>) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED_ERRORS {
            self.listed.push(RowError {
                line,
                code,
                message: message.into(),
            });
        }
    }
}
