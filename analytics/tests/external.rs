//! Imports of external data (NOAA GHCN-Daily, World Bank indicators, OpenStreetMap
//! GeoJSON): each sample in `testdata/external/` imported into a lake and read back in
//! SQL, against what the test works out from the sample's text by itself (plain string
//! splitting, serde_json, an area integrated over the ellipsoid); the same file imported
//! twice is written once; an invalid record refuses the whole file, nothing written, unless
//! skip_invalid; places the map leaves out have no region and are counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow_cast::display::{ArrayFormatter, FormatOptions};
use canopy_analytics::{
    AnalyticsError, ExternalSource, ImportOptions, ImportReport, LakeConfig, LakeQuery, LakeReader,
    LakeSql, RegionMap, RowError, SqlLimits, import_external,
};
use proptest::prelude::*;
use serde_json::{Value, json};

#[path = "common/s3.rs"]
mod s3;

fn sample(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/external")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sample_text(name: &str) -> String {
    String::from_utf8(sample(name)).unwrap()
}

fn region_map() -> RegionMap {
    RegionMap::parse_csv(&sample_text("regions.map.csv")).unwrap()
}

fn lake() -> (tempfile::TempDir, LakeConfig) {
    let dir = tempfile::tempdir().unwrap();
    let config = LakeConfig::new(dir.path().to_path_buf());
    (dir, config)
}

const STRICT: ImportOptions = ImportOptions {
    skip_invalid: false,
};
const SKIP_INVALID: ImportOptions = ImportOptions { skip_invalid: true };

fn import(
    config: &LakeConfig,
    source: ExternalSource,
    bytes: &[u8],
    map: &RegionMap,
    options: ImportOptions,
) -> Result<ImportReport, AnalyticsError> {
    import_external(config, source, bytes, map, &options, &mut |_| {})
}

/// The refusal's report, or a panic naming what came instead.
fn refused(result: Result<ImportReport, AnalyticsError>) -> ImportReport {
    match result {
        Err(AnalyticsError::ImportRefused { report }) => *report,
        other => panic!("expected import_refused, got {other:?}"),
    }
}

fn format_error(result: Result<ImportReport, AnalyticsError>) -> String {
    match result {
        Err(error @ AnalyticsError::ImportFormat { .. }) => {
            assert_eq!(error.code(), "import_format");
            error.to_string()
        }
        other => panic!("expected import_format, got {other:?}"),
    }
}

/// The files of a table's imports, by name.
fn import_files(config_dir: &Path, table: &str) -> Vec<String> {
    let folder: PathBuf = config_dir.join(table).join("import");
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A query's rows as text, NULL for a null.
async fn query(config: &LakeConfig, sql: &str) -> Vec<Vec<String>> {
    let lake = LakeSql::new(config.location.clone(), SqlLimits::default());
    let batches = lake
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in &batches {
        let columns: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|column| ArrayFormatter::try_new(column.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(columns.iter().map(|c| c.value(row).to_string()).collect());
        }
    }
    rows
}

/// The fields of a CSV line every field of which is quoted (names hold commas).
fn quoted_fields(line: &str) -> Vec<&str> {
    let inner = line.strip_prefix('"').unwrap().strip_suffix('"').unwrap();
    inner.split("\",\"").collect()
}

fn number(cell: &str) -> Option<f64> {
    (cell != "NULL").then(|| cell.parse().unwrap())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

// ---------------------------------------------------------------- NOAA

/// The table's elements, in its column order.
const ELEMENTS: [&str; 5] = ["TMAX", "TMIN", "TAVG", "PRCP", "SNOW"];

/// What a by_station file should become, worked out from its lines: per (station, day
/// `YYYY-MM-DD`), the five values in the table's units; and the values left out.
type StationDays = BTreeMap<(String, String), [Option<f64>; 5]>;

fn by_station_expected(text: &str) -> (StationDays, u64) {
    let mut days = StationDays::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let value: i64 = fields[3].parse().unwrap();
        let Some(column) = ELEMENTS.iter().position(|e| *e == fields[2]) else {
            skipped += 1;
            continue;
        };
        if value == -9999 || !fields[5].is_empty() {
            skipped += 1;
            continue;
        }
        let ymd = fields[1];
        let day = format!("{}-{}-{}", &ymd[..4], &ymd[4..6], &ymd[6..]);
        let converted = if fields[2] == "SNOW" {
            value as f64
        } else {
            value as f64 / 10.0
        };
        days.entry((fields[0].to_string(), day)).or_default()[column] = Some(converted);
    }
    (days, skipped)
}

/// Every row of `weather_daily` of one import, by (station, day): its region and values.
async fn weather_rows(
    config: &LakeConfig,
    import_id: &str,
) -> BTreeMap<(String, String), (String, [Option<f64>; 5])> {
    let rows = query(
        config,
        &format!(
            "SELECT station_id, date, region, tmax_c, tmin_c, tavg_c, prcp_mm, snow_mm \
             FROM weather_daily WHERE import_id = '{import_id}'"
        ),
    )
    .await;
    let count = rows.len();
    let by_day: BTreeMap<_, _> = rows
        .into_iter()
        .map(|row| {
            let values = [3, 4, 5, 6, 7].map(|column: usize| number(&row[column]));
            ((row[0].clone(), row[1].clone()), (row[2].clone(), values))
        })
        .collect();
    assert_eq!(by_day.len(), count, "one row per station-day");
    by_day
}

#[tokio::test(flavor = "multi_thread")]
async fn noaa_by_station_pivots_every_value_that_passed_its_quality_check() {
    let (dir, config) = lake();
    let bytes = sample("noaa_ghcnd_USW00094728.csv");
    let text = String::from_utf8(bytes.clone()).unwrap();
    let mut heard = Vec::new();
    let report = import_external(
        &config,
        ExternalSource::Noaa,
        &bytes,
        &region_map(),
        &STRICT,
        &mut |rows| heard.push(rows),
    )
    .unwrap();

    let (expected, skipped) = by_station_expected(&text);
    let lines = text.lines().filter(|l| !l.is_empty()).count() as u64;
    assert_eq!(report.source, "noaa");
    assert_eq!(report.table, "weather_daily");
    assert_eq!(report.rows_read, lines);
    assert_eq!(heard, [lines], "fewer than 10 000 lines: the total only");
    assert_eq!(report.rows_imported, expected.len() as u64);
    assert_eq!(report.rows_skipped, skipped);
    assert!(
        skipped >= 7 + 3,
        "the sample has flagged and missing values"
    );
    let laguardia = expected
        .keys()
        .filter(|(station, _)| station == "USW00014732")
        .count() as u64;
    assert_eq!(
        report.rows_unmapped, laguardia,
        "LaGuardia is not in the map"
    );
    assert_eq!((report.errors_total, report.errors.len()), (0, 0));
    assert!(!report.already_imported);
    assert_eq!(
        report.file.as_deref(),
        Some("weather_daily/import/part-i-00000000000000000000-00000000000000000000.parquet")
    );
    assert_eq!(report.import_id.len(), 16);

    let rows = weather_rows(&config, &report.import_id).await;
    assert_eq!(rows.len(), expected.len());
    for (key, values) in &expected {
        let (region, got) = &rows[key];
        let wanted_region = if key.0 == "USW00094728" {
            "east"
        } else {
            "NULL"
        };
        assert_eq!(region, wanted_region, "{key:?}");
        for (column, (want, got)) in values.iter().zip(got).enumerate() {
            match (want, got) {
                (Some(want), Some(got)) => {
                    assert!(close(*want, *got), "{key:?} {}", ELEMENTS[column])
                }
                (None, None) => {}
                _ => panic!("{key:?} {}: wanted {want:?}, got {got:?}", ELEMENTS[column]),
            }
        }
    }

    // Sums per station, as an analyst would ask.
    let sums = query(
        &config,
        "SELECT station_id, SUM(prcp_mm), COUNT(tmax_c), MIN(tmin_c), SUM(snow_mm) \
         FROM weather_daily GROUP BY station_id ORDER BY station_id",
    )
    .await;
    for row in sums {
        let station = &row[0];
        let of = |column: usize| {
            expected
                .iter()
                .filter(move |((s, _), _)| s == station)
                .filter_map(move |(_, values)| values[column])
        };
        assert!(close(number(&row[1]).unwrap(), of(3).sum()), "{row:?}");
        assert_eq!(row[2].parse::<usize>().unwrap(), of(0).count(), "{row:?}");
        assert!(close(
            number(&row[3]).unwrap(),
            of(1).fold(f64::INFINITY, f64::min)
        ));
        assert!(close(number(&row[4]).unwrap(), of(4).sum()), "{row:?}");
    }

    // The import's folder is no date folder: a filter on `date` still reads it.
    let on_the_fifth = query(
        &config,
        "SELECT COUNT(*) FROM weather_daily WHERE date = '2024-01-05'",
    )
    .await;
    let fifth = expected
        .keys()
        .filter(|(_, day)| day == "2024-01-05")
        .count();
    assert_eq!(on_the_fifth[0][0], fifth.to_string());
    let february = query(
        &config,
        "SELECT COUNT(*) FROM weather_daily WHERE date BETWEEN '2024-02-01' AND '2024-02-29'",
    )
    .await;
    let in_february = expected
        .keys()
        .filter(|(_, day)| day.starts_with("2024-02"))
        .count();
    assert_eq!(february[0][0], in_february.to_string());
    assert_eq!(import_files(dir.path(), "weather_daily").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn noaa_cdo_daily_summaries_are_taken_in_metric_units() {
    let (_dir, config) = lake();
    let text = sample_text("noaa_cdo_daily.csv");
    let report = import(
        &config,
        ExternalSource::Noaa,
        text.as_bytes(),
        &region_map(),
        STRICT,
    )
    .unwrap();

    // Every field is quoted, and names hold commas: split on `","`.
    let mut lines = text.lines();
    let header = quoted_fields(lines.next().unwrap());
    let mut expected = StationDays::new();
    for line in lines {
        let fields = quoted_fields(line);
        let cell = |name: &str| fields[header.iter().position(|h| *h == name).unwrap()];
        let values = ELEMENTS.map(|element| {
            header
                .contains(&element)
                .then(|| cell(element))
                .filter(|v| !v.is_empty())
                .map(|v| v.parse::<f64>().unwrap())
        });
        expected.insert(
            (cell("STATION").to_string(), cell("DATE").to_string()),
            values,
        );
    }
    assert_eq!(report.rows_read, expected.len() as u64);
    assert_eq!(report.rows_imported, expected.len() as u64);
    assert_eq!(report.rows_unmapped, 0);

    let rows = weather_rows(&config, &report.import_id).await;
    for (key, values) in &expected {
        let (region, got) = &rows[key];
        let wanted_region = if key.0 == "USW00094728" {
            "east"
        } else {
            "south"
        };
        assert_eq!(region, wanted_region);
        assert_eq!(values, got, "{key:?}");
    }
    // Central Park's export has no TAVG; Newark's misses some snowfall.
    assert!(
        rows.iter()
            .all(|((s, _), (_, v))| s != "USW00094728" || v[2].is_none())
    );
    assert!(
        rows.iter()
            .any(|((s, _), (_, v))| s == "USW00014734" && v[4].is_none())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_file_is_imported_once_and_another_gets_the_next_number() {
    let (dir, config) = lake();
    let map = region_map();
    let bytes = sample("noaa_ghcnd_USW00094728.csv");
    let first = import(&config, ExternalSource::Noaa, &bytes, &map, STRICT).unwrap();
    let again = import(&config, ExternalSource::Noaa, &bytes, &map, STRICT).unwrap();
    assert!(again.already_imported);
    assert_eq!(again.file, first.file);
    assert_eq!(again.import_id, first.import_id);
    assert_eq!(import_files(dir.path(), "weather_daily").len(), 1);
    let count = "SELECT COUNT(*) FROM weather_daily";
    assert_eq!(
        query(&config, count).await[0][0],
        first.rows_imported.to_string()
    );

    let cdo = sample("noaa_cdo_daily.csv");
    let second = import(&config, ExternalSource::Noaa, &cdo, &map, STRICT).unwrap();
    assert_eq!(
        second.file.as_deref(),
        Some("weather_daily/import/part-i-00000000000000000001-00000000000000000001.parquet")
    );
    // And once more after it, still found.
    assert!(
        import(&config, ExternalSource::Noaa, &bytes, &map, STRICT)
            .unwrap()
            .already_imported
    );
    assert!(
        import(&config, ExternalSource::Noaa, &cdo, &map, STRICT)
            .unwrap()
            .already_imported
    );
    assert_eq!(import_files(dir.path(), "weather_daily").len(), 2);
    let per_import = query(
        &config,
        "SELECT import_id, COUNT(*) FROM weather_daily GROUP BY import_id ORDER BY import_id",
    )
    .await;
    let mut wanted = vec![
        vec![first.import_id.clone(), first.rows_imported.to_string()],
        vec![second.import_id.clone(), second.rows_imported.to_string()],
    ];
    wanted.sort();
    assert_eq!(per_import, wanted);

    // The same bytes into another table are another table's business.
    let refused = import(&config, ExternalSource::WorldBank, &bytes, &map, STRICT);
    assert!(refused.is_err());
}

/// In a bucket too: one object per import, found again by its footer, read by SQL.
#[tokio::test(flavor = "multi_thread")]
async fn an_import_into_a_lake_in_s3_is_written_once() {
    let config = LakeConfig::new(s3::s3_lake());
    let map = region_map();
    let bytes = sample("worldbank_indicators.json");
    let (first, again) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            let first = import(&config, ExternalSource::WorldBank, &bytes, &map, STRICT).unwrap();
            let again = import(&config, ExternalSource::WorldBank, &bytes, &map, STRICT).unwrap();
            (first, again)
        }
    })
    .await
    .unwrap();
    assert!(!first.already_imported);
    assert!(again.already_imported);
    assert_eq!(again.file, first.file);
    assert_eq!(config.location.table_files("indicators").unwrap().len(), 1);
    let count = query(&config, "SELECT COUNT(*) FROM indicators").await;
    assert_eq!(count[0][0], first.rows_imported.to_string());
}

#[test]
fn a_noaa_file_with_invalid_lines_is_refused_whole_and_nothing_is_written() {
    let (dir, config) = lake();
    let map = region_map();
    let text = sample_text("noaa_ghcnd_USW00094728.csv");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut corrupt = |line: usize, from: &str, to: &str| {
        let corrupted = lines[line - 1].replacen(from, to, 1);
        assert_ne!(corrupted, lines[line - 1]);
        lines[line - 1] = corrupted;
    };
    corrupt(6, ",20240102,", ",20241302,"); // month 13
    corrupt(10, "TMAX,", "TMAX,abc"); // not an integer
    corrupt(15, "USW00094728", "USW0009472"); // 10 characters
    corrupt(20, ",W,", ",W,,extra"); // 9 fields
    lines.push(lines[0].clone()); // a duplicate of line 1
    let duplicate_line = lines.len() as u64;
    let last = lines.len() - 2;
    lines[last].truncate(20); // truncated download: the last full line cut short
    let corrupted = lines.join("\n");

    let report = refused(import(
        &config,
        ExternalSource::Noaa,
        corrupted.as_bytes(),
        &map,
        STRICT,
    ));
    let found: Vec<(u64, &str)> = report.errors.iter().map(|e| (e.line, e.code)).collect();
    assert_eq!(
        found,
        [
            (6, "bad_date"),
            (10, "bad_value"),
            (15, "bad_station"),
            (20, "bad_columns"),
            (last as u64 + 1, "bad_columns"),
            (duplicate_line, "duplicate_value"),
        ]
    );
    assert_eq!(report.errors_total, 6);
    assert!(
        report.errors[5].message.contains("first on line 1"),
        "{:?}",
        report.errors[5]
    );
    assert_eq!(report.file, None);
    assert!(
        import_files(dir.path(), "weather_daily").is_empty(),
        "nothing written"
    );
    let error = import(
        &config,
        ExternalSource::Noaa,
        corrupted.as_bytes(),
        &map,
        STRICT,
    )
    .unwrap_err();
    assert_eq!(error.code(), "import_refused");
    assert!(error.to_string().contains("line 6: bad_date"), "{error}");

    // With skip_invalid the rest is imported, the invalid lines reported.
    let imported = import(
        &config,
        ExternalSource::Noaa,
        corrupted.as_bytes(),
        &map,
        SKIP_INVALID,
    )
    .unwrap();
    assert_eq!(imported.errors, report.errors);
    assert_eq!(import_files(dir.path(), "weather_daily").len(), 1);
    let valid: String = lines
        .iter()
        .enumerate()
        .filter(|(index, _)| !found.iter().any(|(line, _)| *line == *index as u64 + 1))
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    let (expected, skipped) = by_station_expected(&valid);
    assert_eq!(imported.rows_imported, expected.len() as u64);
    assert_eq!(imported.rows_skipped, skipped);
}

#[test]
fn files_not_of_the_format_are_refused_saying_what_was_expected() {
    let (dir, config) = lake();
    let map = region_map();
    let noaa = |bytes: &[u8]| import(&config, ExternalSource::Noaa, bytes, &map, STRICT);
    assert!(format_error(noaa(b"")).contains("an empty file"));
    assert!(format_error(noaa(b" \n\n")).contains("by_station"));
    assert!(format_error(noaa(&sample("worldbank_SP.POP.TOTL.csv"))).contains("GHCN-Daily"));
    assert!(format_error(noaa(b"\xff\xfe binary")).contains("UTF-8"));
    assert!(format_error(noaa(b"\"STATION\",\"NAME\"\n")).contains("DATE"));

    let worldbank = |bytes: &[u8]| import(&config, ExternalSource::WorldBank, bytes, &map, STRICT);
    assert!(format_error(worldbank(&sample("noaa_cdo_daily.csv"))).contains("Country Name"));
    assert!(format_error(worldbank(b"[1, 2")).contains("World Bank"));
    assert!(format_error(worldbank(b"{\"page\": 1}")).contains("World Bank"));
    let api_error = br#"[{"message":[{"id":"120","key":"Invalid value","value":"The provided parameter value is not valid"}]}]"#;
    assert!(format_error(worldbank(api_error)).contains("refused"));
    let json = sample_text("worldbank_indicators.json");
    let truncated = format_error(worldbank(&json.as_bytes()[..json.len() / 2]));
    assert!(truncated.contains("line"), "{truncated}");

    let osm = |bytes: &[u8]| import(&config, ExternalSource::Osm, bytes, &map, STRICT);
    assert!(format_error(osm(b"")).contains("FeatureCollection"));
    assert!(
        format_error(osm(b"{\"type\":\"Feature\",\"properties\":{}}"))
            .contains("not a FeatureCollection")
    );
    assert!(format_error(osm(b"{\"type\":\"FeatureCollection\"}")).contains("without features"));
    assert!(format_error(osm(&sample("worldbank_indicators.json"))).contains("FeatureCollection"));
    for table in ["weather_daily", "indicators", "regions"] {
        assert!(import_files(dir.path(), table).is_empty());
    }
}

#[test]
fn progress_is_told_every_10_000_rows_and_a_report_lists_at_most_1000_errors() {
    let (_dir, config) = lake();
    let mut text = String::new();
    for n in 0..25_000u32 {
        let day = 20_000_101 + n % 28;
        let station = format!("USC{:08}", n / 28);
        // Every 20th line is broken (1 250 of them).
        let value = if n % 20 == 0 {
            "x".to_string()
        } else {
            (n % 300).to_string()
        };
        text.push_str(&format!("{station},{day},PRCP,{value},,,7,0700\n"));
    }
    let mut heard = Vec::new();
    let result = import_external(
        &config,
        ExternalSource::Noaa,
        text.as_bytes(),
        &RegionMap::new(),
        &STRICT,
        &mut |rows| heard.push(rows),
    );
    assert_eq!(heard, [10_000, 20_000, 25_000]);
    let report = refused(result);
    assert_eq!(report.errors_total, 1250);
    assert_eq!(report.errors.len(), 1000);
    assert_eq!(report.errors[999].line, 999 * 20 + 1);
    let imported = import(
        &config,
        ExternalSource::Noaa,
        text.as_bytes(),
        &RegionMap::new(),
        SKIP_INVALID,
    )
    .unwrap();
    assert_eq!(imported.rows_imported, 25_000 - 1250);
    assert_eq!(
        imported.rows_unmapped, imported.rows_imported,
        "an empty map maps nothing"
    );
}

// ---------------------------------------------------------------- World Bank

/// (indicator, country ISO3, year) → value.
type Observations = BTreeMap<(String, String, i32), f64>;

#[tokio::test(flavor = "multi_thread")]
async fn worldbank_bulk_csv_gives_a_row_per_country_and_year_with_a_value() {
    let (_dir, config) = lake();
    let text = sample_text("worldbank_SP.POP.TOTL.csv");
    let report = import(
        &config,
        ExternalSource::WorldBank,
        text.as_bytes(),
        &region_map(),
        STRICT,
    )
    .unwrap();

    // The header is the fifth line; each line ends with a comma.
    let unquote = |line: &str| -> Vec<String> {
        let line = line
            .trim_start_matches('\u{feff}')
            .strip_suffix(',')
            .unwrap();
        quoted_fields(line)
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    let lines: Vec<&str> = text.lines().collect();
    let header = unquote(lines[4]);
    assert_eq!(
        header[..4],
        [
            "Country Name",
            "Country Code",
            "Indicator Name",
            "Indicator Code"
        ]
    );
    let mut expected = Observations::new();
    let mut names = BTreeMap::new();
    let (mut cells, mut empty) = (0u64, 0u64);
    for line in &lines[5..] {
        let fields = unquote(line);
        names.insert(fields[1].clone(), fields[0].clone());
        for (year, cell) in header[4..].iter().zip(&fields[4..]) {
            cells += 1;
            if cell.is_empty() {
                empty += 1;
                continue;
            }
            expected.insert(
                (fields[3].clone(), fields[1].clone(), year.parse().unwrap()),
                cell.parse().unwrap(),
            );
        }
    }
    assert_eq!(names.len(), 8);
    assert_eq!(report.rows_read, cells);
    assert_eq!(report.rows_skipped, empty);
    assert!(empty > 10, "the sample has empty cells");
    assert_eq!(report.rows_imported, expected.len() as u64);
    let unmapped = expected
        .keys()
        .filter(|(_, c, _)| c == "ERI" || c == "WLD")
        .count();
    assert_eq!(report.rows_unmapped, unmapped as u64);

    let rows = query(
        &config,
        "SELECT indicator_code, country_code, year, value, region, country_name, indicator_name \
         FROM indicators",
    )
    .await;
    assert_eq!(rows.len(), expected.len());
    let map = region_map();
    for row in &rows {
        let key = (row[0].clone(), row[1].clone(), row[2].parse().unwrap());
        assert_eq!(number(&row[3]), Some(expected[&key]), "{key:?}");
        assert_eq!(row[4], map.get(&row[1]).unwrap_or("NULL"), "{key:?}");
        assert_eq!(row[5], names[&row[1]]);
        assert_eq!(row[6], "Population, total");
    }
    // Per country, the sum over the years.
    let sums = query(
        &config,
        "SELECT country_code, SUM(value), COUNT(*) FROM indicators GROUP BY country_code",
    )
    .await;
    for row in sums {
        let of = expected.iter().filter(|((_, c, _), _)| *c == row[0]);
        let (sum, count) = of.fold((0.0, 0), |(s, n), (_, v)| (s + v, n + 1));
        assert!(close(number(&row[1]).unwrap(), sum), "{row:?}");
        assert_eq!(row[2], count.to_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn worldbank_api_json_skips_null_values_and_takes_any_indicator() {
    let (_dir, config) = lake();
    let bytes = sample("worldbank_indicators.json");
    let report = import(
        &config,
        ExternalSource::WorldBank,
        &bytes,
        &region_map(),
        STRICT,
    )
    .unwrap();

    let document: Value = serde_json::from_slice(&bytes).unwrap();
    let observations = document[1].as_array().unwrap();
    let mut expected = Observations::new();
    let mut nulls = 0;
    for observation in observations {
        if observation["value"].is_null() {
            nulls += 1;
            continue;
        }
        expected.insert(
            (
                observation["indicator"]["id"].as_str().unwrap().to_string(),
                observation["countryiso3code"].as_str().unwrap().to_string(),
                observation["date"].as_str().unwrap().parse().unwrap(),
            ),
            observation["value"].as_f64().unwrap(),
        );
    }
    assert_eq!(report.rows_read, observations.len() as u64);
    assert_eq!(report.rows_skipped, nulls);
    assert!(nulls > 0);
    assert_eq!(report.rows_imported, expected.len() as u64);
    assert_eq!(report.rows_unmapped, 0);

    let rows = query(
        &config,
        "SELECT indicator_code, country_code, year, value, region FROM indicators \
         ORDER BY indicator_code, country_code, year",
    )
    .await;
    let got: Observations = rows
        .iter()
        .map(|row| {
            (
                (row[0].clone(), row[1].clone(), row[2].parse().unwrap()),
                number(&row[3]).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    let codes: BTreeSet<&str> = rows.iter().map(|row| row[0].as_str()).collect();
    assert_eq!(
        codes,
        BTreeSet::from([
            "NY.GDP.PCAP.CD",
            "SI.POV.DDAY",
            "SL.UEM.TOTL.ZS",
            "SP.POP.TOTL"
        ])
    );
    let kenya = query(
        &config,
        "SELECT DISTINCT region, country_name FROM indicators WHERE country_code = 'KEN'",
    )
    .await;
    assert_eq!(kenya, [["east", "Kenya"]]);
}

#[test]
fn worldbank_invalid_records_are_numbered_by_line_or_observation() {
    let (dir, config) = lake();
    let map = region_map();
    let text = sample_text("worldbank_SP.POP.TOTL.csv");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[6] = lines[6].replacen(",\"DEU\",", ",\"DE\",", 1); // line 7: ISO2, not ISO3
    let kenya = lines.iter().position(|l| l.contains("\"KEN\"")).unwrap();
    lines[kenya] = lines[kenya].replacen(",\"55100586\",", ",\"55.1 Mio\",", 1);
    let world = lines.len() - 1;
    let half = lines[world].len() / 2;
    lines[world].truncate(half); // a download cut short
    lines.push(lines[kenya - 1].clone()); // a country twice
    let csv = lines.join("\n");
    let report = refused(import(
        &config,
        ExternalSource::WorldBank,
        csv.as_bytes(),
        &map,
        STRICT,
    ));
    let first_codes: Vec<(u64, &str)> = report
        .errors
        .iter()
        .take(4)
        .map(|e| (e.line, e.code))
        .collect();
    assert_eq!(
        first_codes,
        [
            (7, "bad_country"),
            (kenya as u64 + 1, "bad_value"),
            (world as u64 + 1, "bad_columns"),
            (lines.len() as u64, "duplicate_value"),
        ]
    );
    assert!(
        report.errors[1].message.contains("2023"),
        "{:?}",
        report.errors[1]
    );
    assert!(import_files(dir.path(), "indicators").is_empty());

    let mut document: Value = serde_json::from_slice(&sample("worldbank_indicators.json")).unwrap();
    let observations = document[1].as_array_mut().unwrap();
    observations[3]["value"] = json!("216422446");
    observations[7]["date"] = json!("2023Q1");
    observations[11]["countryiso3code"] = json!("");
    let json = serde_json::to_vec(&document).unwrap();
    let report = refused(import(
        &config,
        ExternalSource::WorldBank,
        &json,
        &map,
        STRICT,
    ));
    let found: Vec<(u64, &str)> = report.errors.iter().map(|e| (e.line, e.code)).collect();
    assert_eq!(
        found,
        [(4, "bad_value"), (8, "bad_year"), (12, "bad_country")]
    );
    assert!(
        report.errors[0].message.starts_with("observation 4"),
        "{:?}",
        report.errors[0]
    );
    assert!(import_files(dir.path(), "indicators").is_empty());

    let imported = import(
        &config,
        ExternalSource::WorldBank,
        &json,
        &map,
        SKIP_INVALID,
    )
    .unwrap();
    assert_eq!(imported.errors_total, 3);
    assert_eq!(imported.rows_read, 60);
    assert_eq!(imported.rows_imported + imported.rows_skipped + 3, 60);
}

// ---------------------------------------------------------------- OpenStreetMap

/// The area of the quadrangle between two meridians and two parallels on the WGS84
/// ellipsoid, in km², by Simpson's rule over its area element M(φ)·N(φ)·cos φ dφ dλ.
fn quadrangle_km2(west: f64, south: f64, east: f64, north: f64) -> f64 {
    let a = 6_378_137.0;
    let f = 1.0 / 298.257_223_563;
    let e2 = f * (2.0 - f);
    let element = |lat: f64| {
        let sin = lat.sin();
        let w = 1.0 - e2 * sin * sin;
        let meridian = a * (1.0 - e2) / w.powf(1.5);
        let normal = a / w.sqrt();
        meridian * normal * lat.cos()
    };
    let (from, to) = (south.to_radians(), north.to_radians());
    let steps = 1000;
    let h = (to - from) / steps as f64;
    let inner: f64 = (1..steps)
        .map(|i| element(from + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
        .sum();
    (element(from) + element(to) + inner) * h / 3.0 * (east - west).to_radians() / 1e6
}

/// A rectangle's one ring, as GeoJSON coordinates.
fn rectangle(west: f64, south: f64, east: f64, north: f64) -> Value {
    json!([
        [west, south],
        [east, south],
        [east, north],
        [west, north],
        [west, south]
    ])
}

/// The bounding box of every position under `coordinates`: (west, south, east, north).
fn bounds(coordinates: &Value) -> (f64, f64, f64, f64) {
    fn walk(value: &Value, out: &mut Vec<(f64, f64)>) {
        match value.as_array() {
            Some(items) if items.first().is_some_and(Value::is_number) => {
                out.push((items[0].as_f64().unwrap(), items[1].as_f64().unwrap()));
            }
            Some(items) => items.iter().for_each(|item| walk(item, out)),
            None => {}
        }
    }
    let mut positions = Vec::new();
    walk(coordinates, &mut positions);
    positions.iter().fold(
        (f64::MAX, f64::MAX, f64::MIN, f64::MIN),
        |(w, s, e, n), &(x, y)| (w.min(x), s.min(y), e.max(x), n.max(y)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn osm_boundaries_and_land_use_with_areas_centroids_and_regions() {
    let (_dir, config) = lake();
    let bytes = sample("osm_regions.geojson");
    let report = import(&config, ExternalSource::Osm, &bytes, &region_map(), STRICT).unwrap();
    assert_eq!(
        (report.rows_read, report.rows_imported, report.rows_skipped),
        (15, 13, 2)
    );
    assert_eq!(
        report.rows_unmapped, 2,
        "Friedrichshain-Kreuzberg and the Potsdam wood"
    );

    let rows = query(
        &config,
        "SELECT osm_id, region, name, kind, admin_level, landuse, area_km2, centroid_lat, \
         centroid_lon FROM regions",
    )
    .await;
    let rows: BTreeMap<String, Vec<String>> =
        rows.into_iter().map(|row| (row[0].clone(), row)).collect();
    // Worked out by hand from the sample's outlines: the smallest mapped boundary holding
    // each land use's centroid (Friedrichshain-Kreuzberg is not mapped: Berlin's region).
    let wanted = [
        ("relation/62422", "east", "boundary", "4", "NULL"),
        ("relation/16347", "north", "boundary", "9", "NULL"),
        ("relation/55764", "NULL", "boundary", "9", "NULL"),
        ("way/4410476", "north", "landuse", "NULL", "park"),
        ("way/23924598", "east", "landuse", "NULL", "park"),
        ("way/8090208", "east", "landuse", "NULL", "park"),
        ("relation/2869834", "east", "landuse", "NULL", "forest"),
        ("way/31482116", "north", "landuse", "NULL", "residential"),
        ("way/26316437", "east", "landuse", "NULL", "residential"),
        ("way/42919567", "east", "landuse", "NULL", "industrial"),
        ("way/118364530", "east", "landuse", "NULL", "farmland"),
        ("relation/1382397", "east", "landuse", "NULL", "water"),
        ("way/25478925", "NULL", "landuse", "NULL", "wood"),
    ];
    assert_eq!(rows.len(), wanted.len());
    for (id, region, kind, level, class) in wanted {
        let row = &rows[id];
        assert_eq!(
            [&row[1], &row[3], &row[4], &row[5]],
            [region, kind, level, class],
            "{id}"
        );
    }
    assert_eq!(rows["way/31482116"][2], "", "an unnamed land use");
    assert_eq!(rows["relation/1382397"][2], "Großer Müggelsee");

    // Areas and centroids of the quadrangles, against the ellipsoid integrated here.
    let document: Value = serde_json::from_slice(&bytes).unwrap();
    for feature in document["features"].as_array().unwrap() {
        let id = feature["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("way/{}", feature["properties"]["@id"]));
        let Some(row) = rows.get(&id) else {
            continue;
        };
        let coordinates = &feature["geometry"]["coordinates"];
        let rings: Vec<&Value> = match feature["geometry"]["type"].as_str().unwrap() {
            "Polygon" => coordinates.as_array().unwrap().iter().collect(),
            _ => coordinates
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|p| p.as_array().unwrap())
                .collect(),
        };
        let quadrangles = rings.iter().all(|ring| ring.as_array().unwrap().len() == 5);
        let area = number(&row[6]).unwrap();
        let (west, south, east, north) = bounds(coordinates);
        if !quadrangles {
            assert!(
                area > 0.0 && area < quadrangle_km2(west, south, east, north),
                "{id}"
            );
            continue;
        }
        // A polygon's first ring counts, the others (holes) take away; parts add up.
        let polygons: Vec<Vec<&Value>> = match feature["geometry"]["type"].as_str().unwrap() {
            "Polygon" => vec![coordinates.as_array().unwrap().iter().collect()],
            _ => coordinates
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_array().unwrap().iter().collect())
                .collect(),
        };
        let wanted: f64 = polygons
            .iter()
            .map(|rings| {
                rings
                    .iter()
                    .enumerate()
                    .map(|(n, ring)| {
                        let (w, s, e, n2) = bounds(ring);
                        quadrangle_km2(w, s, e, n2) * if n == 0 { 1.0 } else { -1.0 }
                    })
                    .sum::<f64>()
            })
            .sum();
        assert!(
            ((area - wanted) / wanted).abs() < 0.005,
            "{id}: {area} km² against {wanted}"
        );
        if polygons.len() == 1 && polygons[0].len() == 1 {
            let (lat, lon) = (number(&row[7]).unwrap(), number(&row[8]).unwrap());
            assert!((lat - (south + north) / 2.0).abs() < 1e-9, "{id}: {lat}");
            assert!((lon - (west + east) / 2.0).abs() < 1e-9, "{id}: {lon}");
        }
    }
}

fn feature(id: &str, properties: Value, geometry: Value) -> Value {
    json!({"type": "Feature", "id": id, "properties": properties, "geometry": geometry})
}

fn polygon(rings: Vec<Value>) -> Value {
    json!({"type": "Polygon", "coordinates": rings})
}

fn boundary(name: &str, level: u32) -> Value {
    json!({"boundary": "administrative", "admin_level": level.to_string(), "name": name})
}

fn collection(features: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "FeatureCollection", "features": features})).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_known_rectangle_has_its_area_and_land_use_goes_to_the_smallest_boundary_holding_it() {
    let (dir, config) = lake();
    let mut map = RegionMap::new();
    map.insert("Outer", "north").unwrap();
    map.insert("Inner", "south").unwrap();
    map.insert("DE-XX", "west").unwrap();
    let landuse = |id: &str, w: f64, s: f64| {
        feature(
            id,
            json!({"landuse": "meadow"}),
            polygon(vec![rectangle(w, s, w + 0.02, s + 0.02)]),
        )
    };
    let bytes = collection(vec![
        // Outer, with a hole; Inner and Unmapped inside it; Coded mapped by its ISO code.
        feature(
            "relation/1",
            boundary("Outer", 6),
            polygon(vec![
                rectangle(10.0, 50.0, 11.0, 51.0),
                rectangle(10.4, 50.4, 10.6, 50.6),
            ]),
        ),
        feature(
            "relation/2",
            boundary("Inner", 8),
            polygon(vec![rectangle(10.1, 50.1, 10.3, 50.3)]),
        ),
        feature(
            "relation/3",
            boundary("Unmapped", 8),
            polygon(vec![rectangle(10.7, 50.7, 10.9, 50.9)]),
        ),
        feature(
            "relation/4",
            json!({"boundary": "administrative", "admin_level": 4, "name": "Coded", "ISO3166-2": "DE-XX"}),
            polygon(vec![rectangle(20.0, 50.0, 21.0, 51.0)]),
        ),
        landuse("way/10", 10.15, 50.15), // in Inner (and Outer): the smaller
        landuse("way/11", 10.05, 50.8),  // in Outer only
        landuse("way/12", 10.49, 50.49), // in Outer's hole: in nothing
        landuse("way/13", 10.75, 50.75), // in Unmapped, in Outer: Outer's region
        landuse("way/14", 12.0, 52.0),   // outside every boundary
        landuse("way/15", 20.5, 50.5),   // in Coded
        // A known rectangle: 0.05° × 0.03° in Nairobi, and a whole degree at the equator.
        feature(
            "way/20",
            json!({"natural": "wood"}),
            polygon(vec![rectangle(36.80, -1.30, 36.85, -1.27)]),
        ),
        feature(
            "way/21",
            json!({"landuse": "forest"}),
            polygon(vec![rectangle(0.0, 0.0, 1.0, 1.0)]),
        ),
    ]);
    let report = import(&config, ExternalSource::Osm, &bytes, &map, STRICT).unwrap();
    assert_eq!(report.rows_imported, 12);

    let rows = query(
        &config,
        "SELECT osm_id, region, area_km2 FROM regions ORDER BY osm_id",
    )
    .await;
    let by_id: BTreeMap<&str, (&str, f64)> = rows
        .iter()
        .map(|row| (row[0].as_str(), (row[1].as_str(), number(&row[2]).unwrap())))
        .collect();
    let regions: Vec<(&str, &str)> = ["way/10", "way/11", "way/12", "way/13", "way/14", "way/15"]
        .into_iter()
        .map(|id| (id, by_id[id].0))
        .collect();
    assert_eq!(
        regions,
        [
            ("way/10", "south"),
            ("way/11", "north"),
            ("way/12", "NULL"),
            ("way/13", "north"),
            ("way/14", "NULL"),
            ("way/15", "west"),
        ]
    );
    assert_eq!(by_id["relation/3"].0, "NULL");
    assert_eq!(
        by_id["relation/4"].0, "west",
        "mapped by its ISO 3166-2 code"
    );

    for (id, (w, s, e, n)) in [
        ("way/20", (36.80, -1.30, 36.85, -1.27)),
        ("way/21", (0.0, 0.0, 1.0, 1.0)),
    ] {
        let wanted = quadrangle_km2(w, s, e, n);
        let area = by_id[id].1;
        assert!(
            ((area - wanted) / wanted).abs() < 0.005,
            "{id}: {area} against {wanted}"
        );
    }
    // A degree square at the equator: 110.57 km of meridian by 111.32 km of equator.
    assert!(
        (by_id["way/21"].1 - 12_308.8).abs() < 2.0,
        "{}",
        by_id["way/21"].1
    );
    let outer = quadrangle_km2(10.0, 50.0, 11.0, 51.0) - quadrangle_km2(10.4, 50.4, 10.6, 50.6);
    assert!(((by_id["relation/1"].1 - outer) / outer).abs() < 0.005);
    assert_eq!(import_files(dir.path(), "regions").len(), 1);
}

#[test]
fn osm_invalid_features_are_numbered_by_their_index() {
    let (dir, config) = lake();
    let bytes = collection(vec![
        feature(
            "way/1",
            json!({"landuse": "forest"}),
            polygon(vec![rectangle(1.0, 1.0, 1.1, 1.1)]),
        ),
        feature(
            "way/2",
            json!({"landuse": "forest"}),
            json!({"type": "LineString", "coordinates": [[1.0, 1.0], [1.1, 1.1]]}),
        ),
        feature(
            "relation/3",
            json!({"boundary": "administrative", "admin_level": "x", "name": "A"}),
            polygon(vec![rectangle(1.0, 1.0, 2.0, 2.0)]),
        ),
        feature(
            "relation/4",
            json!({"boundary": "administrative", "admin_level": "8"}),
            polygon(vec![rectangle(1.0, 1.0, 2.0, 2.0)]),
        ),
        feature(
            "way/5",
            json!({"landuse": "farmland"}),
            polygon(vec![json!([[1.0, 1.0], [1.1, 1.0], [1.0, 1.0]])]),
        ),
        feature(
            "way/1",
            json!({"landuse": "forest"}),
            polygon(vec![rectangle(1.0, 1.0, 1.1, 1.1)]),
        ),
        json!({"type": "Feature", "properties": {"landuse": "grass"}, "geometry": polygon(vec![rectangle(1.0, 1.0, 1.1, 1.1)])}),
        json!("a string"),
        feature(
            "node/9",
            json!({"amenity": "bench"}),
            json!({"type": "Point", "coordinates": [1.0, 1.0]}),
        ),
        feature(
            "way/10",
            json!({"landuse": "forest"}),
            polygon(vec![rectangle(190.0, 1.0, 191.0, 1.1)]),
        ),
    ]);
    let report = refused(import(
        &config,
        ExternalSource::Osm,
        &bytes,
        &RegionMap::new(),
        STRICT,
    ));
    let found: Vec<(u64, &str)> = report.errors.iter().map(|e| (e.line, e.code)).collect();
    assert_eq!(
        found,
        [
            (2, "bad_geometry"),
            (3, "bad_admin_level"),
            (4, "bad_name"),
            (5, "bad_geometry"),
            (6, "duplicate_feature"),
            (7, "bad_id"),
            (8, "bad_feature"),
            (10, "bad_geometry"),
        ]
    );
    assert!(
        report.errors[0].message.starts_with("feature 2 "),
        "{:?}",
        report.errors[0]
    );
    assert!(report.errors[0].message.contains("LineString"));
    assert!(import_files(dir.path(), "regions").is_empty());

    let imported = import(
        &config,
        ExternalSource::Osm,
        &bytes,
        &RegionMap::new(),
        SKIP_INVALID,
    )
    .unwrap();
    assert_eq!(
        (
            imported.rows_imported,
            imported.rows_skipped,
            imported.rows_read
        ),
        (1, 1, 10)
    );
    assert_eq!(imported.rows_unmapped, 1);
}

// ---------------------------------------------------------------- region map, tables

#[test]
fn a_region_map_is_csv_with_an_optional_header_and_line_numbered_errors() {
    let map = RegionMap::parse_csv("# stations\nUSW00094728,east\n\n\"Washington, D.C.\",north\n")
        .unwrap();
    assert_eq!(map.get("USW00094728"), Some("east"));
    assert_eq!(map.get("Washington, D.C."), Some("north"));
    assert_eq!(map.len(), 2);
    let map = RegionMap::parse_csv("source_region,region\nKEN,east\nKEN,east\n").unwrap();
    assert_eq!(map.get("KEN"), Some("east"));
    assert_eq!(map.get("source_region"), None);

    let error = |text: &str| {
        let error = RegionMap::parse_csv(text).unwrap_err();
        assert_eq!(error.code(), "bad_region_map");
        error.to_string()
    };
    assert!(error("source_region,region\nKEN,east\n#\nNGA,south west\n").contains("line 4"));
    assert!(error("KEN,east\nKEN,south\n").contains("line 2"));
    assert!(error("KEN\n").contains("line 1"));
    assert!(error("KEN,east,extra\n").contains("line 1"));
    assert!(error(&format!("KEN,{}\n", "n".repeat(65))).contains("line 1"));
    assert!(error("KEN,\n").contains("line 1"));
    assert!(error(",east\n").contains("line 1"));
    let mut map = RegionMap::new();
    assert!(map.insert("BRA", "south_america.1-b").is_ok());
    assert_eq!(
        map.insert("BRA", "süd").unwrap_err().code(),
        "bad_region_map"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn analysts_see_the_imported_tables_even_before_any_import() {
    let (_dir, config) = lake();
    for table in ["weather_daily", "indicators", "regions"] {
        assert!(LakeReader::Analyst.reads(table));
        assert!(LakeReader::Admin.reads(table));
        let empty = query(&config, &format!("SELECT COUNT(*) FROM {table}")).await;
        assert_eq!(empty, [["0"]]);
    }
    let columns = query(
        &config,
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns \
         WHERE table_name = 'weather_daily' ORDER BY ordinal_position",
    )
    .await;
    let names: Vec<&str> = columns.iter().map(|c| c[1].as_str()).collect();
    assert_eq!(
        names,
        [
            "station_id",
            "region",
            "date",
            "tmax_c",
            "tmin_c",
            "tavg_c",
            "prcp_mm",
            "snow_mm",
            "import_id"
        ]
    );
    assert_eq!(columns[2][2], "Date32");
    assert_eq!(columns[1][3], "YES");
}

/// Imported rows come back in the order the files declare (region with NULL last), so a
/// query ordering by it is right whether or not DataFusion sorts again.
#[tokio::test(flavor = "multi_thread")]
async fn rows_without_a_region_sort_last_as_the_files_declare() {
    let (_dir, config) = lake();
    let bytes = sample("worldbank_SP.POP.TOTL.csv");
    import(
        &config,
        ExternalSource::WorldBank,
        &bytes,
        &region_map(),
        STRICT,
    )
    .unwrap();
    let regions = query(
        &config,
        "SELECT region FROM indicators ORDER BY region NULLS LAST",
    )
    .await;
    let unsorted = query(&config, "SELECT region FROM indicators").await;
    assert_eq!(regions, unsorted, "the file's own order");
    assert_eq!(regions.last().unwrap()[0], "NULL");
}

// ---------------------------------------------------------------- the pivot, at random

/// One by_station line, valid: an element (SNWD the table has no column for), a value or
/// -9999, and whether its quality check failed.
fn ghcn_line() -> impl Strategy<Value = (usize, u32, usize, i64, bool)> {
    (
        0usize..3,
        0u32..31,
        0usize..6,
        prop_oneof![8 => -400i64..=450, 1 => Just(-9999)],
        proptest::bool::weighted(0.15),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_pivot_keeps_every_value_that_passed_its_quality_check(
        lines in proptest::collection::vec(ghcn_line(), 1..150),
    ) {
        const STATIONS: [&str; 3] = ["USW00094728", "ASN00086282", "GME00127786"];
        const CODES: [&str; 6] = ["TMAX", "TMIN", "TAVG", "PRCP", "SNOW", "SNWD"];
        let mut seen = BTreeSet::new();
        let mut text = String::new();
        for (station, day, element, value, flagged) in lines {
            // Rain and snow are never below zero; one value per station, day and element.
            let value = if element >= 3 && value != -9999 { value.abs() } else { value };
            if !seen.insert((station, day, element)) {
                continue;
            }
            let date = 20_240_301 + day;
            let quality = if flagged { "I" } else { "" };
            text.push_str(&format!(
                "{},{date},{},{value},,{quality},S,0700\n",
                STATIONS[station], CODES[element]
            ));
        }
        let (expected, skipped) = by_station_expected(&text);
        let (_dir, config) = lake();
        let report = import(&config, ExternalSource::Noaa, text.as_bytes(), &RegionMap::new(), STRICT).unwrap();
        prop_assert_eq!(report.rows_read, seen.len() as u64);
        prop_assert_eq!(report.rows_skipped, skipped);
        prop_assert_eq!(report.rows_imported, expected.len() as u64);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let rows = runtime.block_on(weather_rows(&config, &report.import_id));
        let got: StationDays = rows.into_iter().map(|(key, (_, values))| (key, values)).collect();
        prop_assert_eq!(got, expected);
    }
}

/// The report is what the API hands out as JSON.
#[test]
fn a_report_serializes_with_its_errors() {
    let report = ImportReport {
        source: "noaa",
        table: "weather_daily",
        import_id: "0123456789abcdef".into(),
        rows_read: 3,
        rows_imported: 1,
        rows_unmapped: 1,
        rows_skipped: 1,
        errors: vec![RowError {
            line: 2,
            code: "bad_date",
            message: "\"20241302\" is not a date YYYYMMDD".into(),
        }],
        errors_total: 1,
        already_imported: false,
        file: None,
    };
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(value["errors"][0]["code"], "bad_date");
    assert_eq!(value["file"], Value::Null);
    assert_eq!(value["rows_unmapped"], 1);
}
