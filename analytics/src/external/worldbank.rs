//! World Bank development indicators into `indicators`, one row per country, indicator and
//! year.
//!
//! Two of the World Bank's own files, told apart by their first byte (`[` for JSON):
//! - the bulk CSV download (`API_<INDICATOR>_DS2_en_csv_v2_*.csv`): a preamble (data
//!   source, last updated), then `"Country Name","Country Code","Indicator Name",
//!   "Indicator Code","1960",…,"2024",` and a line per country (aggregates such as `WLD`
//!   too), a cell per year, empty where there is no value;
//! - the API's JSON (`/v2/country/all/indicator/<INDICATOR>?format=json`): `[page info,
//!   [observation, …]]`, an observation naming its indicator, country, ISO3 code, year
//!   and value (null where there is none).
//!
//! Any indicator code is taken (population SP.POP.TOTL, income NY.GDP.PCAP.CD, poverty
//! SI.POV.DDAY, unemployment SL.UEM.TOTL.ZS, …), several in one file too. Empty and null
//! values are left out and counted. Errors: `bad_country`, `bad_indicator`, `bad_year`,
//! `bad_value`, `bad_columns`, `duplicate_value`. A JSON record's `line` is its index in
//! the observations plus one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;

use super::reading::{
    EachElement, Parsed, Progress, csv_fields, json_kind, not_json, region_order, text_of,
};
use super::region_map::RegionMap;
use crate::AnalyticsError;
use crate::columns::{Columns, TableLayout};
use crate::import_report::RowErrors;

const EXPECTED: &str = "a World Bank indicator file: the bulk CSV (a preamble, then the \
    header \"Country Name\",\"Country Code\",\"Indicator Name\",\"Indicator Code\",\"1960\",…) \
    or the API's JSON ([{\"page\":…}, [observations…]])";

/// The bulk CSV's preamble is four lines; a few more are allowed for hand-edited files.
const MAX_PREAMBLE_LINES: usize = 10;
const HEADER: [&str; 4] = [
    "Country Name",
    "Country Code",
    "Indicator Name",
    "Indicator Code",
];

/// The `indicators` table.
pub(crate) struct Indicators;

pub(crate) struct IndicatorValue {
    country_code: Arc<str>,
    country_name: Arc<str>,
    region: Option<Arc<str>>,
    indicator_code: Arc<str>,
    indicator_name: Arc<str>,
    year: i32,
    value: f64,
    import_id: Arc<str>,
}

impl TableLayout for Indicators {
    type Row = IndicatorValue;
    const NAME: &'static str = "indicators";

    fn columns<'r>(rows: &'r [&'r IndicatorValue], _day: i32) -> Columns<'r, IndicatorValue> {
        Columns::of(rows)
            .text("country_code", |row| &*row.country_code)
            .text("country_name", |row| &*row.country_name)
            .optional_text("region", |row| row.region.as_deref())
            .text("indicator_code", |row| &*row.indicator_code)
            .text("indicator_name", |row| &*row.indicator_name)
            .int32("year", |row| row.year)
            .float64("value", |row| row.value)
            .text("import_id", |row| &*row.import_id)
    }

    /// Region, indicator, country, year.
    fn sort_columns() -> Vec<usize> {
        vec![2, 3, 0, 5]
    }
}

pub(super) fn parse(
    bytes: &[u8],
    map: &RegionMap,
    import_id: &str,
    progress: &mut Progress,
    errors: &mut RowErrors,
) -> Result<Parsed, AnalyticsError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'[' || b == b'{');
    let mut values = Values::new(map, if json { "observation" } else { "line" });
    if json {
        parse_json(bytes, &mut values, progress, errors)?;
    } else {
        parse_csv(text_of(bytes, EXPECTED)?, &mut values, progress, errors)?;
    }
    values.finish(import_id)
}

type LineError = (&'static str, String);

fn parse_csv(
    text: &str,
    values: &mut Values,
    progress: &mut Progress,
    errors: &mut RowErrors,
) -> Result<(), AnalyticsError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index as u64 + 1, line));
    let header = lines
        .by_ref()
        .take(MAX_PREAMBLE_LINES + 1)
        .find_map(|(_, line)| {
            let fields = csv_fields(line).ok()?;
            fields
                .first()
                .is_some_and(|f| f.trim().eq_ignore_ascii_case(HEADER[0]))
                .then_some(fields)
        })
        .ok_or_else(|| AnalyticsError::ImportFormat {
            expected: EXPECTED,
            found: format!(
                "no header line starting \"Country Name\" in its first {} lines",
                MAX_PREAMBLE_LINES + 1
            ),
        })?;
    let named_as_expected = header.len() > HEADER.len()
        && HEADER
            .iter()
            .zip(&header)
            .all(|(want, got)| got.trim().eq_ignore_ascii_case(want));
    if !named_as_expected {
        return Err(AnalyticsError::ImportFormat {
            expected: EXPECTED,
            found: format!(
                "a header of {:?}",
                header.iter().take(6).collect::<Vec<_>>()
            ),
        });
    }
    // The download ends every line with a comma: an empty last column.
    let trailing_empty = header.last().is_some_and(|f| f.trim().is_empty());
    let year_cells = &header[HEADER.len()..header.len() - usize::from(trailing_empty)];
    let years = year_cells
        .iter()
        .map(|cell| year(cell).map_err(|(_, reason)| reason))
        .collect::<Result<Vec<i32>, String>>()
        .map_err(|reason| AnalyticsError::ImportFormat {
            expected: EXPECTED,
            found: format!("a header whose year column {reason}"),
        })?;

    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let read = csv_line(text, line, &years, values, progress, errors);
        if let Err((code, message)) = read {
            // The line could not be read into values: it counts as one record.
            progress.row();
            errors.push(line, code, message);
        }
    }
    Ok(())
}

/// One country's line of the bulk CSV: a value per year.
fn csv_line(
    text: &str,
    line: u64,
    years: &[i32],
    values: &mut Values,
    progress: &mut Progress,
    errors: &mut RowErrors,
) -> Result<(), LineError> {
    let fields = csv_fields(text).map_err(|e| ("bad_columns", e))?;
    let cells = HEADER.len() + years.len();
    let trailing_empty = fields.len() == cells + 1 && fields[cells].trim().is_empty();
    if fields.len() != cells && !trailing_empty {
        return Err((
            "bad_columns",
            format!(
                "expected {cells} fields (country, code, indicator, code and {} years), \
                 found {}",
                years.len(),
                fields.len()
            ),
        ));
    }
    let country = values.country(&fields[1], &fields[0])?;
    let indicator = values.indicator(&fields[3], &fields[2])?;
    for (cell, &year) in fields[HEADER.len()..cells].iter().zip(years) {
        progress.row();
        let cell = cell.trim();
        if cell.is_empty() {
            values.skipped += 1;
            continue;
        }
        let added = cell
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                (
                    "bad_value",
                    format!("{year} of {}: {cell:?} is not a number", country.0),
                )
            })
            .and_then(|value| values.add(&country, &indicator, year, value, line));
        if let Err((code, message)) = added {
            errors.push(line, code, message);
        }
    }
    Ok(())
}

fn parse_json(
    bytes: &[u8],
    values: &mut Values,
    progress: &mut Progress,
    errors: &mut RowErrors,
) -> Result<(), AnalyticsError> {
    let mut index = 0u64;
    let mut each = |observation: Value| {
        index += 1;
        progress.row();
        if let Err((code, message)) = json_observation(&observation, index, values) {
            errors.push(index, code, format!("observation {index}: {message}"));
        }
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    de::Deserializer::deserialize_seq(&mut deserializer, ApiResponse(&mut each))
        .and_then(|()| deserializer.end())
        .map_err(|e| not_json(EXPECTED, &e))
}

/// `[page info, [observations…]]`; the observations go to the closure one at a time.
struct ApiResponse<'f, F>(&'f mut F);

impl<'de, F: FnMut(Value)> Visitor<'de> for ApiResponse<'_, F> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("the API's [page info, [observations…]]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let page: Value = items
            .next_element()?
            .ok_or_else(|| de::Error::custom("an empty array, not [page info, observations]"))?;
        // The API answers a bad request with `[{"message":[{"id","key","value"}]}]`.
        if let Some(message) = page.get("message") {
            return Err(de::Error::custom(format!(
                "the API's answer to a request it refused: {message}"
            )));
        }
        if !page.get("page").is_some_and(|_| page.is_object()) {
            return Err(de::Error::custom(format!(
                "its first element is {}, not the page info {{\"page\":…}}",
                json_kind(&page)
            )));
        }
        // Null when the indicator has no data at all.
        items.next_element_seed(EachElement(self.0))?;
        while items.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

fn json_observation(observation: &Value, index: u64, values: &mut Values) -> Result<(), LineError> {
    let text = |value: Option<&Value>| {
        value
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let country = values.country(
        &text(observation.get("countryiso3code")),
        &text(observation.pointer("/country/value")),
    )?;
    let indicator = values.indicator(
        &text(observation.pointer("/indicator/id")),
        &text(observation.pointer("/indicator/value")),
    )?;
    let year = match observation.get("date") {
        Some(Value::String(date)) => year(date)?,
        Some(Value::Number(date)) => year(&date.to_string())?,
        other => {
            return Err((
                "bad_year",
                format!("date is {}, not a year", other.map_or("missing", json_kind)),
            ));
        }
    };
    match observation.get("value") {
        None | Some(Value::Null) => {
            values.skipped += 1;
            Ok(())
        }
        Some(Value::Number(number)) => {
            let value = number
                .as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(|| ("bad_value", format!("{number} is not a finite number")))?;
            values.add(&country, &indicator, year, value, index)
        }
        Some(other) => Err((
            "bad_value",
            format!("value is {}, not a number or null", json_kind(other)),
        )),
    }
}

/// A year as the World Bank writes it: four digits (monthly and quarterly series, `2023M01`,
/// `2023Q1`, have no column here).
fn year(raw: &str) -> Result<i32, LineError> {
    let raw = raw.trim();
    match raw.parse::<i32>() {
        Ok(year) if raw.len() == 4 && (1000..=9999).contains(&year) => Ok(year),
        _ => Err(("bad_year", format!("{raw:?} is not a year YYYY"))),
    }
}

/// A country as the table names it: its ISO3 code, its name and its mapped region.
type Country = (Arc<str>, Arc<str>, Option<Arc<str>>);
/// An indicator's code and name.
type Indicator = (Arc<str>, Arc<str>);

/// The values gathered so far, each name kept once.
struct Values<'m> {
    map: &'m RegionMap,
    /// What the file's records are called: `line` (CSV) or `observation` (JSON).
    record: &'static str,
    countries: HashMap<Arc<str>, Country>,
    indicators: HashMap<Arc<str>, Indicator>,
    /// (indicator, country, year) → the line it came from.
    seen: HashMap<(Arc<str>, Arc<str>, i32), u64>,
    rows: Vec<(Country, Indicator, i32, f64)>,
    skipped: u64,
}

impl<'m> Values<'m> {
    fn new(map: &'m RegionMap, record: &'static str) -> Self {
        Self {
            map,
            record,
            countries: HashMap::new(),
            indicators: HashMap::new(),
            seen: HashMap::new(),
            rows: Vec::new(),
            skipped: 0,
        }
    }

    /// An ISO 3166-1 alpha-3 code (or one of the World Bank's aggregates, `WLD`, `EAS`, …)
    /// and its name; the name first given for a code is the one kept.
    fn country(&mut self, code: &str, name: &str) -> Result<Country, LineError> {
        let code = code.trim();
        if let Some(country) = self.countries.get(code) {
            return Ok(country.clone());
        }
        if code.len() != 3
            || !code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err((
                "bad_country",
                format!("{code:?} is not a three-letter country code (ISO 3166-1 alpha-3)"),
            ));
        }
        let name = name.trim();
        if name.is_empty() {
            return Err(("bad_country", format!("country {code} has no name")));
        }
        let country: Country = (
            Arc::from(code),
            Arc::from(name),
            self.map.get(code).map(Arc::from),
        );
        self.countries
            .insert(Arc::clone(&country.0), country.clone());
        Ok(country)
    }

    /// An indicator code (`SP.POP.TOTL`) and its name; the name first given is kept.
    fn indicator(&mut self, code: &str, name: &str) -> Result<Indicator, LineError> {
        let code = code.trim();
        if let Some(indicator) = self.indicators.get(code) {
            return Ok(indicator.clone());
        }
        let valid = (1..=64).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_'));
        if !valid {
            return Err((
                "bad_indicator",
                format!("{code:?} is not an indicator code (such as SP.POP.TOTL)"),
            ));
        }
        let name = name.trim();
        if name.is_empty() {
            return Err(("bad_indicator", format!("indicator {code} has no name")));
        }
        let indicator: Indicator = (Arc::from(code), Arc::from(name));
        self.indicators
            .insert(Arc::clone(&indicator.0), indicator.clone());
        Ok(indicator)
    }

    fn add(
        &mut self,
        country: &Country,
        indicator: &Indicator,
        year: i32,
        value: f64,
        line: u64,
    ) -> Result<(), LineError> {
        let key = (Arc::clone(&indicator.0), Arc::clone(&country.0), year);
        if let Some(earlier) = self.seen.get(&key) {
            return Err((
                "duplicate_value",
                format!(
                    "{} of {} in {year} is given again (first at {} {earlier}, again at {line})",
                    indicator.0, country.0, self.record
                ),
            ));
        }
        self.seen.insert(key, line);
        self.rows
            .push((country.clone(), indicator.clone(), year, value));
        Ok(())
    }

    fn finish(self, import_id: &str) -> Result<Parsed, AnalyticsError> {
        let import_id: Arc<str> = Arc::from(import_id);
        let mut rows: Vec<IndicatorValue> = self
            .rows
            .into_iter()
            .map(|(country, indicator, year, value)| IndicatorValue {
                country_code: country.0,
                country_name: country.1,
                region: country.2,
                indicator_code: indicator.0,
                indicator_name: indicator.1,
                year,
                value,
                import_id: Arc::clone(&import_id),
            })
            .collect();
        rows.sort_unstable_by(|a, b| {
            region_order(&a.region, &b.region)
                .then_with(|| a.indicator_code.cmp(&b.indicator_code))
                .then_with(|| a.country_code.cmp(&b.country_code))
                .then(a.year.cmp(&b.year))
        });
        Parsed::of::<Indicators>(&rows, |row| row.region.as_ref(), self.skipped)
    }
}
