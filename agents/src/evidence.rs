//! What the agents know of a region, read from the lake: the sensor network's windows and
//! anomalies of the last 30 days, weather normals, land use and socio-economic indicators
//! (the imported tables). Each part names the rows it came from, so an assessment can show
//! its evidence. A table the lake lacks (nothing imported yet) leaves its part empty and is
//! listed as missing: the agents then say what they could not weigh.

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use canopy_analytics::LakeQuery;
use serde::Serialize;

/// How far back the sensor windows go.
pub const SENSOR_DAYS: i64 = 30;
/// |z| above which a sensor minute counts as an anomaly (the features dataflow's flag).
pub const ANOMALY_Z: f64 = 4.0;

/// A metric's state in the region over the last [`SENSOR_DAYS`] days.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MetricFacts {
    pub metric: String,
    /// Region-wide hourly windows seen.
    pub hours: u64,
    /// Mean of the readings in those windows (the metric's canonical unit).
    pub mean: Option<f64>,
    /// Sensor minutes flagged as anomalous (|z| > 4).
    pub anomalies: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WeatherFacts {
    /// Station-days imported for the region.
    pub days: u64,
    pub mean_tmax_c: Option<f64>,
    pub mean_tmin_c: Option<f64>,
    pub mean_prcp_mm: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LandUseFacts {
    /// The region's boundary area (0 when no boundary was imported).
    pub boundary_km2: f64,
    /// Land-use polygons' area per class.
    pub by_class: BTreeMap<String, f64>,
}

impl LandUseFacts {
    /// Classes that are natural land: what a plan converting them takes away.
    pub const NATURAL: [&'static str; 7] = [
        "forest", "wood", "water", "park", "meadow", "grass", "wetland",
    ];

    pub fn natural_km2(&self) -> f64 {
        self.by_class
            .iter()
            .filter(|(class, _)| Self::NATURAL.contains(&class.as_str()))
            .map(|(_, area)| area)
            .sum()
    }
}

/// The latest value of each indicator the agents use (summed over the region's countries
/// for population, averaged for the rest).
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct IndicatorFacts {
    pub population: Option<f64>,
    pub gdp_per_capita_usd: Option<f64>,
    pub poverty_percent: Option<f64>,
    pub unemployment_percent: Option<f64>,
}

/// The rows one part of the evidence came from.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EvidenceRow {
    pub table: String,
    /// The rows read, as the SQL filter that selected them.
    pub filter: String,
    pub rows: u64,
}

/// Everything the agents read of a region.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RegionEvidence {
    pub region: String,
    pub metrics: Vec<MetricFacts>,
    pub weather: WeatherFacts,
    pub land_use: LandUseFacts,
    pub indicators: IndicatorFacts,
    pub rows: Vec<EvidenceRow>,
    /// Tables that could not be read (not in the lake, or no lake at all), with why.
    pub missing: Vec<String>,
    /// When it was read, microseconds since the Unix epoch.
    pub read_at: i64,
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn number(batch: &RecordBatch, column: usize, row: usize) -> Option<f64> {
    let array = batch.column(column);
    if array.is_null(row) {
        return None;
    }
    array
        .as_primitive_opt::<arrow_array::types::Float64Type>()
        .map(|a| a.value(row))
        .or_else(|| {
            array
                .as_primitive_opt::<arrow_array::types::Int64Type>()
                .map(|a| a.value(row) as f64)
        })
}

fn text(batch: &RecordBatch, column: usize, row: usize) -> String {
    let array = batch.column(column);
    if array.is_null(row) {
        return String::new();
    }
    if let Some(strings) = array.as_string_opt::<i32>() {
        return strings.value(row).to_string();
    }
    if let Some(strings) = array.as_string_view_opt() {
        return strings.value(row).to_string();
    }
    String::new()
}

fn rows(batches: &[RecordBatch]) -> impl Iterator<Item = (&RecordBatch, usize)> {
    batches
        .iter()
        .flat_map(|batch| (0..batch.num_rows()).map(move |row| (batch, row)))
}

impl RegionEvidence {
    /// An empty account of `region`, every table missing for `why`.
    pub fn unavailable(region: &str, why: &str, read_at: i64) -> Self {
        Self {
            region: region.to_string(),
            missing: ["window_features", "weather_daily", "regions", "indicators"]
                .iter()
                .map(|table| format!("{table}: {why}"))
                .collect(),
            read_at,
            ..Default::default()
        }
    }

    /// Reads `region`'s evidence from the lake as of `now` (microseconds).
    pub async fn read(lake: &dyn LakeQuery, region: &str, now: i64) -> Self {
        let mut evidence = Self {
            region: region.to_string(),
            read_at: now,
            ..Default::default()
        };
        let region_is = format!("region = {}", quoted(region));
        let since = now - SENSOR_DAYS * 86_400_000_000;
        let since_day = since.div_euclid(86_400_000_000);
        let sensor_filter = format!(
            "{region_is} AND window_start >= to_timestamp_micros({since}) \
             AND date >= CAST({since_day} AS DATE)"
        );
        let hourly = "sensor IS NULL AND width_s = 3600";
        let sensors = format!(
            "SELECT metric, \
               CAST(SUM(CASE WHEN {hourly} THEN 1 ELSE 0 END) AS DOUBLE), \
               SUM(CASE WHEN {hourly} THEN mean * CAST(count AS DOUBLE) ELSE 0 END) \
                 / NULLIF(CAST(SUM(CASE WHEN {hourly} THEN count ELSE 0 END) AS DOUBLE), 0), \
               CAST(SUM(CASE WHEN sensor IS NOT NULL AND max_abs_z > {ANOMALY_Z:.1} THEN 1 ELSE 0 END) AS DOUBLE), \
               CAST(COUNT(*) AS DOUBLE) \
             FROM window_features WHERE {sensor_filter} GROUP BY metric ORDER BY metric"
        );
        if let Some(batches) = evidence.run(lake, "window_features", &sensors).await {
            let mut read = 0.0;
            for (batch, row) in rows(&batches) {
                evidence.metrics.push(MetricFacts {
                    metric: text(batch, 0, row),
                    hours: number(batch, 1, row).unwrap_or(0.0) as u64,
                    mean: number(batch, 2, row),
                    anomalies: number(batch, 3, row).unwrap_or(0.0) as u64,
                });
                read += number(batch, 4, row).unwrap_or(0.0);
            }
            evidence.note("window_features", sensor_filter, read as u64);
        }
        let weather = format!(
            "SELECT CAST(COUNT(*) AS DOUBLE), AVG(tmax_c), AVG(tmin_c), AVG(prcp_mm) \
             FROM weather_daily WHERE {region_is}"
        );
        if let Some(batches) = evidence.run(lake, "weather_daily", &weather).await {
            if let Some((batch, row)) = rows(&batches).next() {
                evidence.weather = WeatherFacts {
                    days: number(batch, 0, row).unwrap_or(0.0) as u64,
                    mean_tmax_c: number(batch, 1, row),
                    mean_tmin_c: number(batch, 2, row),
                    mean_prcp_mm: number(batch, 3, row),
                };
            }
            evidence.note("weather_daily", region_is.clone(), evidence.weather.days);
        }
        let land = format!(
            "SELECT kind, COALESCE(landuse, ''), SUM(area_km2), CAST(COUNT(*) AS DOUBLE) \
             FROM regions WHERE {region_is} GROUP BY kind, COALESCE(landuse, '') ORDER BY 1, 2"
        );
        if let Some(batches) = evidence.run(lake, "regions", &land).await {
            let mut read = 0.0;
            for (batch, row) in rows(&batches) {
                let area = number(batch, 2, row).unwrap_or(0.0);
                match text(batch, 0, row).as_str() {
                    "boundary" => evidence.land_use.boundary_km2 += area,
                    _ => {
                        *evidence
                            .land_use
                            .by_class
                            .entry(text(batch, 1, row))
                            .or_default() += area;
                    }
                }
                read += number(batch, 3, row).unwrap_or(0.0);
            }
            evidence.note("regions", region_is.clone(), read as u64);
        }
        let indicators = format!(
            "SELECT indicator_code, country_code, CAST(year AS DOUBLE) AS year_number, value \
             FROM indicators WHERE {region_is} AND value IS NOT NULL \
             ORDER BY indicator_code, country_code, year_number DESC"
        );
        if let Some(batches) = evidence.run(lake, "indicators", &indicators).await {
            let mut latest: BTreeMap<(String, String), f64> = BTreeMap::new();
            let mut read = 0;
            for (batch, row) in rows(&batches) {
                read += 1;
                let key = (text(batch, 0, row), text(batch, 1, row));
                if let Some(value) = number(batch, 3, row) {
                    latest.entry(key).or_insert(value);
                }
            }
            evidence.indicators = IndicatorFacts::of(&latest);
            evidence.note("indicators", region_is, read);
        }
        evidence
    }

    async fn run(
        &mut self,
        lake: &dyn LakeQuery,
        table: &str,
        sql: &str,
    ) -> Option<Vec<RecordBatch>> {
        match lake.query(sql).await {
            Ok(batches) => Some(batches),
            Err(error) => {
                // Callers (any voter, through recommendations) see the table and a plain
                // reason; the lake's error, which may name its files and plans, stays in the log.
                tracing::warn!(table, %error, "an agent's evidence could not be read");
                self.missing.push(format!(
                    "{table}: the lake could not be read (the node's log says why)"
                ));
                None
            }
        }
    }

    fn note(&mut self, table: &str, filter: String, rows: u64) {
        self.rows.push(EvidenceRow {
            table: table.to_string(),
            filter,
            rows,
        });
    }

    /// The facts of `metric`, if the region's sensors report it.
    pub fn metric(&self, metric: &str) -> Option<&MetricFacts> {
        self.metrics.iter().find(|m| m.metric == metric)
    }
}

impl IndicatorFacts {
    /// From each (indicator, country)'s latest value.
    pub fn of(latest: &BTreeMap<(String, String), f64>) -> Self {
        let values = |code: &str| -> Vec<f64> {
            latest
                .iter()
                .filter(|((indicator, _), _)| indicator == code)
                .map(|(_, value)| *value)
                .collect()
        };
        let mean = |code: &str| {
            let values = values(code);
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let population = values("SP.POP.TOTL");
        Self {
            population: (!population.is_empty()).then(|| population.iter().sum()),
            gdp_per_capita_usd: mean("NY.GDP.PCAP.CD"),
            poverty_percent: mean("SI.POV.DDAY"),
            unemployment_percent: mean("SL.UEM.TOTL.ZS"),
        }
    }
}
