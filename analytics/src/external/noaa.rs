//! NOAA GHCN-Daily weather into `weather_daily`, one row per station and day.
//!
//! Two of NOAA's own files:
//! - the by_station CSV (`…/ghcn/daily/by_station/<ID>.csv`): no header, one value per line,
//!   `ID,YYYYMMDD,ELEMENT,DATA_VALUE,M_FLAG,Q_FLAG,S_FLAG,OBS_TIME`; temperatures and
//!   precipitation in tenths (°C, mm), snowfall in mm, -9999 for a missing value, and a
//!   Q_FLAG on a value that failed a quality check;
//! - the Climate Data Online "Daily Summaries" CSV: a header `"STATION","NAME","DATE",…`
//!   with a column per element (whichever were asked for), one station-day per line, in
//!   metric units (°C, mm), an empty cell for a missing value, and `<ELEMENT>_ATTRIBUTES`
//!   columns (`M,Q,S,T`) when attributes were asked for.
//!
//! Both are pivoted to a row per station-day holding TMAX, TMIN, TAVG, PRCP and SNOW.
//! Values missing, flagged, or of other elements (SNWD, WT…) are left out and counted; a
//! station-day none of whose values is left makes no row. The same element of a station
//! and day twice in one file is an error (`duplicate_value`): which to keep is not ours
//! to guess. Errors: `bad_station`, `bad_date`, `bad_value`, `bad_columns`,
//! `duplicate_value`.

use std::collections::HashMap;
use std::sync::Arc;

use super::reading::{Parsed, Progress, csv_fields, region_order, text_of};
use super::region_map::RegionMap;
use crate::AnalyticsError;
use crate::columns::{Columns, TableLayout};
use crate::import_report::RowErrors;
use crate::lake::{date_name, day_number};

const EXPECTED: &str = "a NOAA GHCN-Daily by_station CSV (no header; lines \
    ID,YYYYMMDD,ELEMENT,DATA_VALUE,M_FLAG,Q_FLAG,S_FLAG,OBS_TIME) or a NOAA CDO Daily \
    Summaries CSV (header \"STATION\",\"NAME\",\"DATE\",\"PRCP\",…)";

const BY_STATION_FIELDS: usize = 8;
/// GHCN-Daily's mark for a value not observed.
const MISSING: i64 = -9999;

/// The elements the table keeps, in its column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Element {
    Tmax,
    Tmin,
    Tavg,
    Prcp,
    Snow,
}

impl Element {
    const ALL: [Self; 5] = [Self::Tmax, Self::Tmin, Self::Tavg, Self::Prcp, Self::Snow];

    fn code(self) -> &'static str {
        match self {
            Self::Tmax => "TMAX",
            Self::Tmin => "TMIN",
            Self::Tavg => "TAVG",
            Self::Prcp => "PRCP",
            Self::Snow => "SNOW",
        }
    }

    fn of(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// The by_station file's integer in the table's unit: tenths for all but snowfall.
    fn in_table_unit(self, value: i64) -> f64 {
        match self {
            Self::Snow => value as f64,
            _ => value as f64 / 10.0,
        }
    }

    /// Whether a value in the table's unit is one the Earth has seen: beyond it is a broken
    /// file, not weather (the records are -89.2 °C, 56.7 °C, 1 825 mm of rain in a day).
    fn plausible(self, value: f64) -> bool {
        match self {
            Self::Tmax | Self::Tmin | Self::Tavg => (-100.0..=70.0).contains(&value),
            Self::Prcp | Self::Snow => (0.0..=10_000.0).contains(&value),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Tmax | Self::Tmin | Self::Tavg => "°C",
            Self::Prcp | Self::Snow => "mm",
        }
    }
}

/// The `weather_daily` table.
pub(crate) struct WeatherDaily;

/// One station-day.
pub(crate) struct WeatherDay {
    station_id: Arc<str>,
    region: Option<Arc<str>>,
    date: i32,
    /// By [`Element::ALL`].
    values: [Option<f64>; 5],
    import_id: Arc<str>,
}

impl TableLayout for WeatherDaily {
    type Row = WeatherDay;
    const NAME: &'static str = "weather_daily";

    fn columns<'r>(rows: &'r [&'r WeatherDay], _day: i32) -> Columns<'r, WeatherDay> {
        let value = |element: Element| move |row: &WeatherDay| row.values[element as usize];
        Columns::of(rows)
            .text("station_id", |row| &*row.station_id)
            .optional_text("region", |row| row.region.as_deref())
            .date32("date", |row| row.date)
            .optional_float64("tmax_c", value(Element::Tmax))
            .optional_float64("tmin_c", value(Element::Tmin))
            .optional_float64("tavg_c", value(Element::Tavg))
            .optional_float64("prcp_mm", value(Element::Prcp))
            .optional_float64("snow_mm", value(Element::Snow))
            .text("import_id", |row| &*row.import_id)
    }

    /// Region, station, date.
    fn sort_columns() -> Vec<usize> {
        vec![1, 0, 2]
    }
}

pub(super) fn parse(
    bytes: &[u8],
    map: &RegionMap,
    import_id: &str,
    progress: &mut Progress,
    errors: &mut RowErrors,
) -> Result<Parsed, AnalyticsError> {
    let text = text_of(bytes, EXPECTED)?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index as u64 + 1, line))
        .filter(|(_, line)| !line.trim().is_empty())
        .peekable();
    let Some(&(_, first)) = lines.peek() else {
        unreachable!("text_of refuses a blank file");
    };
    let first_fields = csv_fields(first).unwrap_or_default();
    let mut pivot = Pivot::new(map);
    if first_fields
        .first()
        .is_some_and(|f| f.trim().eq_ignore_ascii_case("STATION"))
    {
        lines.next();
        let columns = CdoColumns::of(&first_fields)?;
        for (line, text) in lines {
            progress.row();
            if let Err((code, message)) = columns.read_line(text, line, &mut pivot) {
                errors.push(line, code, message);
            }
        }
    } else if first_fields.len() == BY_STATION_FIELDS {
        for (line, text) in lines {
            progress.row();
            if let Err((code, message)) = read_by_station_line(text, line, &mut pivot) {
                errors.push(line, code, message);
            }
        }
    } else {
        return Err(AnalyticsError::ImportFormat {
            expected: EXPECTED,
            found: format!(
                "its first line has {} field(s) and no CDO header: {:?}",
                first_fields.len(),
                first.chars().take(80).collect::<String>()
            ),
        });
    }
    pivot.finish(import_id)
}

type LineError = (&'static str, String);

/// One line of a by_station file: one value of one element.
fn read_by_station_line(text: &str, line: u64, pivot: &mut Pivot) -> Result<(), LineError> {
    let fields = csv_fields(text).map_err(|e| ("bad_columns", e))?;
    if fields.len() != BY_STATION_FIELDS {
        return Err((
            "bad_columns",
            format!(
                "expected {BY_STATION_FIELDS} fields \
                 (ID,YYYYMMDD,ELEMENT,DATA_VALUE,M_FLAG,Q_FLAG,S_FLAG,OBS_TIME), found {}",
                fields.len()
            ),
        ));
    }
    let station = station_id(&fields[0])?;
    let date = compact_date(&fields[1])?;
    let code = fields[2].trim();
    let raw = fields[3].trim();
    let value: i64 = raw.parse().map_err(|_| {
        (
            "bad_value",
            format!("{code} value {raw:?} is not an integer"),
        )
    })?;
    let Some(element) = Element::of(code) else {
        pivot.skipped += 1;
        return Ok(());
    };
    let quality_flag = fields[5].trim();
    let kept = if value == MISSING || !quality_flag.is_empty() {
        None
    } else {
        let converted = element.in_table_unit(value);
        if !element.plausible(converted) {
            return Err((
                "bad_value",
                format!(
                    "{code} {value} ({converted} {}) is not a plausible value",
                    element.unit()
                ),
            ));
        }
        Some(converted)
    };
    pivot.check(station, date, element, line)?;
    pivot.add(station, date, element, kept, line);
    if kept.is_none() {
        pivot.skipped += 1;
    }
    Ok(())
}

/// Where a CDO file's columns are.
struct CdoColumns {
    count: usize,
    station: usize,
    date: usize,
    /// Per element the file has: its value column and its attributes column, if any.
    elements: Vec<(Element, usize, Option<usize>)>,
}

impl CdoColumns {
    fn of(header: &[std::borrow::Cow<'_, str>]) -> Result<Self, AnalyticsError> {
        let find = |name: &str| {
            header
                .iter()
                .position(|f| f.trim().eq_ignore_ascii_case(name))
        };
        let (Some(station), Some(date)) = (find("STATION"), find("DATE")) else {
            return Err(AnalyticsError::ImportFormat {
                expected: EXPECTED,
                found: "a header without both STATION and DATE".into(),
            });
        };
        let elements: Vec<_> = Element::ALL
            .into_iter()
            .filter_map(|element| {
                let value = find(element.code())?;
                Some((
                    element,
                    value,
                    find(&format!("{}_ATTRIBUTES", element.code())),
                ))
            })
            .collect();
        if elements.is_empty() {
            return Err(AnalyticsError::ImportFormat {
                expected: EXPECTED,
                found: "a header with none of PRCP, SNOW, TMAX, TMIN, TAVG".into(),
            });
        }
        Ok(Self {
            count: header.len(),
            station,
            date,
            elements,
        })
    }

    /// One station-day; a line with an invalid cell is left out whole.
    fn read_line(&self, text: &str, line: u64, pivot: &mut Pivot) -> Result<(), LineError> {
        let fields = csv_fields(text).map_err(|e| ("bad_columns", e))?;
        if fields.len() != self.count {
            return Err((
                "bad_columns",
                format!(
                    "expected {} fields as the header has, found {}",
                    self.count,
                    fields.len()
                ),
            ));
        }
        let station = station_id(&fields[self.station])?;
        let raw_date = fields[self.date].trim();
        let date = day_number(raw_date)
            .ok_or_else(|| ("bad_date", format!("{raw_date:?} is not a date YYYY-MM-DD")))?;
        let mut values = Vec::with_capacity(self.elements.len());
        for &(element, column, attributes) in &self.elements {
            let raw = fields[column].trim();
            if raw.is_empty() {
                continue;
            }
            let value: f64 = raw
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| {
                    (
                        "bad_value",
                        format!("{} value {raw:?} is not a number", element.code()),
                    )
                })?;
            if !element.plausible(value) {
                return Err((
                    "bad_value",
                    format!(
                        "{} {value} {} is not a plausible value",
                        element.code(),
                        element.unit()
                    ),
                ));
            }
            // `M,Q,S,T`: a quality flag leaves the value out.
            let flagged = attributes
                .and_then(|a| fields[a].split(',').nth(1))
                .is_some_and(|q| !q.trim().is_empty());
            pivot.check(station, date, element, line)?;
            values.push((element, (!flagged).then_some(value)));
        }
        for &(element, value) in &values {
            pivot.add(station, date, element, value, line);
        }
        if values.iter().all(|(_, value)| value.is_none()) {
            pivot.skipped += 1;
        }
        Ok(())
    }
}

/// A GHCN station id: 11 characters, the country's FIPS code, the network and the
/// station's number (`USW00094728`).
fn station_id(raw: &str) -> Result<&str, LineError> {
    let id = raw.trim();
    if id.len() == 11
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        Ok(id)
    } else {
        Err((
            "bad_station",
            format!("{id:?} is not a GHCN station id (11 characters such as USW00094728)"),
        ))
    }
}

/// `YYYYMMDD`.
fn compact_date(raw: &str) -> Result<i32, LineError> {
    let raw = raw.trim();
    let day = (raw.len() == 8 && raw.bytes().all(|b| b.is_ascii_digit()))
        .then(|| day_number(&format!("{}-{}-{}", &raw[..4], &raw[4..6], &raw[6..])))
        .flatten();
    day.ok_or_else(|| ("bad_date", format!("{raw:?} is not a date YYYYMMDD")))
}

/// Values gathered per station-day, as the file's lines come in any order.
struct Pivot<'m> {
    map: &'m RegionMap,
    /// Each station once: its id and region.
    stations: Vec<(Arc<str>, Option<Arc<str>>)>,
    station_index: HashMap<Arc<str>, u32>,
    days: HashMap<(u32, i32), Day>,
    skipped: u64,
}

#[derive(Default)]
struct Day {
    values: [Option<f64>; 5],
    /// The line each element came from (flagged and missing ones too), to tell a
    /// duplicate where the first is.
    lines: [Option<u64>; 5],
}

impl<'m> Pivot<'m> {
    fn new(map: &'m RegionMap) -> Self {
        Self {
            map,
            stations: Vec::new(),
            station_index: HashMap::new(),
            days: HashMap::new(),
            skipped: 0,
        }
    }

    fn station(&mut self, id: &str) -> u32 {
        if let Some(&index) = self.station_index.get(id) {
            return index;
        }
        let id: Arc<str> = Arc::from(id);
        let region = self.map.get(&id).map(Arc::from);
        let index = self.stations.len() as u32;
        self.stations.push((Arc::clone(&id), region));
        self.station_index.insert(id, index);
        index
    }

    /// Refuses an element of a station-day the file gave before.
    fn check(
        &self,
        station: &str,
        date: i32,
        element: Element,
        line: u64,
    ) -> Result<(), LineError> {
        let earlier = self
            .station_index
            .get(station)
            .and_then(|&s| self.days.get(&(s, date)))
            .and_then(|day| day.lines[element as usize]);
        match earlier {
            Some(earlier) => Err((
                "duplicate_value",
                format!(
                    "{} of {station} on {} is given again (first on line {earlier}; this is \
                     line {line})",
                    element.code(),
                    date_name(date)
                ),
            )),
            None => Ok(()),
        }
    }

    /// An element of a station-day; `None` when the value is left out.
    fn add(&mut self, station: &str, date: i32, element: Element, value: Option<f64>, line: u64) {
        let station = self.station(station);
        let day = self.days.entry((station, date)).or_default();
        day.values[element as usize] = value;
        day.lines[element as usize] = Some(line);
    }

    fn finish(self, import_id: &str) -> Result<Parsed, AnalyticsError> {
        let import_id: Arc<str> = Arc::from(import_id);
        let mut rows: Vec<WeatherDay> = self
            .days
            .into_iter()
            .filter(|(_, day)| day.values.iter().any(Option::is_some))
            .map(|((station, date), day)| {
                let (station_id, region) = &self.stations[station as usize];
                WeatherDay {
                    station_id: Arc::clone(station_id),
                    region: region.clone(),
                    date,
                    values: day.values,
                    import_id: Arc::clone(&import_id),
                }
            })
            .collect();
        rows.sort_unstable_by(|a, b| {
            region_order(&a.region, &b.region)
                .then_with(|| a.station_id.cmp(&b.station_id))
                .then(a.date.cmp(&b.date))
        });
        Parsed::of::<WeatherDaily>(&rows, |row| row.region.as_ref(), self.skipped)
    }
}
