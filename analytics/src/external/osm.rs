//! OpenStreetMap boundaries and land use into `regions`, one row per polygon feature.
//!
//! The file is a GeoJSON FeatureCollection as `osmium export` or overpass-turbo write it,
//! OSM's tags as the features' properties and the object's id as the feature's `id`
//! (`relation/123`, `r123`) or its `@id` property (with `@type`):
//! - `boundary=administrative` with a `name` (and usually `admin_level`, `ISO3166-2`) is a
//!   boundary; its region is the map's for its `ISO3166-2` code, else for its name;
//! - `landuse=*`, `natural=wood|water` and `leisure=park` are land use of that class; its
//!   region is that of the smallest mapped boundary of the same file whose polygon holds
//!   the land use's centroid (none: NULL);
//! - other features are left out and counted.
//!
//! Both must be a Polygon or a MultiPolygon (holes allowed). The area is that of the
//! polygon on the WGS84 ellipsoid (edges straight on the authalic sphere's equal-area
//! map: for polygons the size of a city within a few millionths of the geodesic area),
//! the centroid the area-weighted one. Errors (`line` is the feature's index in the
//! collection plus one, as each message says): `bad_feature`, `bad_geometry`, `bad_id`,
//! `bad_name`, `bad_admin_level`, `duplicate_feature`.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::fmt;
use std::sync::Arc;

use geojson::{Feature, GeometryValue, feature::Id};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::reading::{EachElement, Parsed, Progress, json_kind, not_json, region_order};
use super::region_map::RegionMap;
use crate::AnalyticsError;
use crate::columns::{Columns, TableLayout};
use crate::import_report::RowErrors;

const EXPECTED: &str = "an OpenStreetMap GeoJSON FeatureCollection \
    ({\"type\":\"FeatureCollection\",\"features\":[…]}, as osmium export or overpass-turbo \
    write it)";

const KIND_BOUNDARY: &str = "boundary";
const KIND_LANDUSE: &str = "landuse";
/// OSM's admin levels run 1 (unused) to 11; a few countries' tagging goes a little deeper.
const ADMIN_LEVELS: std::ops::RangeInclusive<i32> = 1..=15;
const MAX_ID_CHARS: usize = 64;

/// The `regions` table.
pub(crate) struct Regions;

pub(crate) struct OsmRegion {
    region: Option<Arc<str>>,
    osm_id: String,
    name: String,
    kind: &'static str,
    admin_level: Option<i32>,
    landuse: Option<String>,
    area_km2: f64,
    centroid: LonLat,
    import_id: Arc<str>,
}

impl TableLayout for Regions {
    type Row = OsmRegion;
    const NAME: &'static str = "regions";

    fn columns<'r>(rows: &'r [&'r OsmRegion], _day: i32) -> Columns<'r, OsmRegion> {
        Columns::of(rows)
            .optional_text("region", |row| row.region.as_deref())
            .text("osm_id", |row| &row.osm_id)
            .text("name", |row| &row.name)
            .text("kind", |row| row.kind)
            .optional_int32("admin_level", |row| row.admin_level)
            .optional_text("landuse", |row| row.landuse.as_deref())
            .float64("area_km2", |row| row.area_km2)
            .float64("centroid_lat", |row| row.centroid.lat)
            .float64("centroid_lon", |row| row.centroid.lon)
            .text("import_id", |row| &*row.import_id)
    }

    /// Region, kind, OSM id.
    fn sort_columns() -> Vec<usize> {
        vec![0, 3, 1]
    }
}

/// Degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LonLat {
    lon: f64,
    lat: f64,
}

/// A closed ring of positions, its last equal to its first.
type Ring = Vec<LonLat>;

/// An outer ring and its holes.
struct Polygon {
    outer: Ring,
    holes: Vec<Ring>,
}

/// A boundary as land use is placed in it.
struct Boundary {
    region: Arc<str>,
    area_km2: f64,
    /// (west, south, east, north): most land use is outside most boundaries' boxes.
    bbox: (f64, f64, f64, f64),
    polygons: Vec<Polygon>,
}

type LineError = (&'static str, String);

pub(super) fn parse(
    bytes: &[u8],
    map: &RegionMap,
    import_id: &str,
    progress: &mut Progress,
    errors: &mut RowErrors,
) -> Result<Parsed, AnalyticsError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(AnalyticsError::ImportFormat {
            expected: EXPECTED,
            found: "an empty file".into(),
        });
    }
    let mut rows: Vec<OsmRegion> = Vec::new();
    let mut boundaries: Vec<Boundary> = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut skipped = 0;
    let mut index = 0u64;
    let mut each = |value: Value| {
        index += 1;
        progress.row();
        let read = read_feature(value, map).and_then(|read| match read {
            Some((row, _)) if seen.contains_key(&row.osm_id) => Err((
                "duplicate_feature",
                format!(
                    "{} is in the collection again (first as feature {})",
                    row.osm_id, seen[&row.osm_id]
                ),
            )),
            other => Ok(other),
        });
        match read {
            Ok(Some((row, polygons))) => {
                seen.insert(row.osm_id.clone(), index);
                if let (Some(region), Some(polygons)) = (&row.region, polygons) {
                    boundaries.push(Boundary {
                        region: Arc::clone(region),
                        area_km2: row.area_km2,
                        bbox: bbox(&polygons),
                        polygons,
                    });
                }
                rows.push(row);
            }
            Ok(None) => skipped += 1,
            Err((code, message)) => errors.push(
                index,
                code,
                format!("feature {index} of the collection (line = its index + 1): {message}"),
            ),
        }
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    de::Deserializer::deserialize_map(&mut deserializer, FeatureCollection(&mut each))
        .and_then(|()| deserializer.end())
        .map_err(|e| not_json(EXPECTED, &e))?;

    // The smallest first, so the first that holds a point is the smallest that does.
    boundaries.sort_by(|a, b| a.area_km2.total_cmp(&b.area_km2));
    let import_id: Arc<str> = Arc::from(import_id);
    for row in &mut rows {
        if row.kind == KIND_LANDUSE {
            row.region = boundaries
                .iter()
                .find(|b| holds(b, row.centroid))
                .map(|b| Arc::clone(&b.region));
        }
        row.import_id = Arc::clone(&import_id);
    }
    rows.sort_unstable_by(|a, b| {
        region_order(&a.region, &b.region)
            .then_with(|| a.kind.cmp(b.kind))
            .then_with(|| a.osm_id.cmp(&b.osm_id))
    });
    Parsed::of::<Regions>(&rows, |row| row.region.as_ref(), skipped)
}

/// `{"type":"FeatureCollection","features":[…]}`, other members ignored; the features go
/// to the closure one at a time.
struct FeatureCollection<'f, F>(&'f mut F);

impl<'de, F: FnMut(Value)> Visitor<'de> for FeatureCollection<'_, F> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a GeoJSON FeatureCollection")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<(), A::Error> {
        let mut kind: Option<String> = None;
        let mut features = false;
        while let Some(key) = members.next_key::<String>()? {
            match key.as_str() {
                "type" => kind = Some(members.next_value()?),
                "features" => {
                    members.next_value_seed(EachElement(&mut *self.0))?;
                    features = true;
                }
                _ => {
                    members.next_value::<IgnoredAny>()?;
                }
            }
        }
        match kind.as_deref() {
            Some("FeatureCollection") if features => Ok(()),
            Some("FeatureCollection") => {
                Err(de::Error::custom("a FeatureCollection without features"))
            }
            Some(other) => Err(de::Error::custom(format!(
                "a GeoJSON {other:?}, not a FeatureCollection"
            ))),
            None => Err(de::Error::custom(
                "an object without \"type\":\"FeatureCollection\"",
            )),
        }
    }
}

/// A feature's row (its region, for land use, still to be found) and, for a boundary, its
/// polygons.
type ReadFeature = (OsmRegion, Option<Vec<Polygon>>);

/// The feature's row and polygons; none for a feature of neither kind.
fn read_feature(value: Value, map: &RegionMap) -> Result<Option<ReadFeature>, LineError> {
    if !value.is_object() {
        return Err((
            "bad_feature",
            format!("{}, not a Feature object", json_kind(&value)),
        ));
    }
    let feature: Feature =
        serde_json::from_value(value).map_err(|e| ("bad_feature", e.to_string()))?;
    let tag = |key: &str| {
        feature
            .property(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let boundary = tag("boundary") == Some("administrative");
    let landuse = if boundary { None } else { landuse_class(&tag) };
    if !boundary && landuse.is_none() {
        return Ok(None);
    }
    let osm_id = osm_id(&feature)?;
    let polygons = polygons(&feature)?;
    let area_km2: f64 = polygons.iter().map(polygon_area_m2).sum::<f64>() / 1e6;
    if area_km2 <= 0.0 {
        return Err(("bad_geometry", "the polygon encloses no area".into()));
    }
    let centroid = centroid(&polygons);
    let name = tag("name").unwrap_or_default().to_string();
    let mut row = OsmRegion {
        region: None,
        osm_id,
        name,
        kind: KIND_LANDUSE,
        admin_level: None,
        landuse,
        area_km2,
        centroid,
        import_id: Arc::from(""),
    };
    if !boundary {
        return Ok(Some((row, None)));
    }
    if row.name.is_empty() {
        return Err(("bad_name", format!("boundary {} has no name", row.osm_id)));
    }
    row.kind = KIND_BOUNDARY;
    row.admin_level = admin_level(feature.property("admin_level"))?;
    row.region = tag("ISO3166-2")
        .and_then(|code| map.get(code))
        .or_else(|| map.get(&row.name))
        .map(Arc::from);
    Ok(Some((row, Some(polygons))))
}

/// The class of a land-use feature: its `landuse`, or the `natural` and `leisure` tags
/// that mark land use as well.
fn landuse_class<'f>(tag: &impl Fn(&str) -> Option<&'f str>) -> Option<String> {
    if let Some(class) = tag("landuse") {
        return Some(class.to_string());
    }
    match (tag("natural"), tag("leisure")) {
        (Some(natural @ ("wood" | "water")), _) => Some(natural.to_string()),
        (_, Some("park")) => Some("park".to_string()),
        _ => None,
    }
}

/// `relation/123` (overpass-turbo), `r123` (osmium's unique ids), or `@type` and `@id`
/// (osmium's attributes).
fn osm_id(feature: &Feature) -> Result<String, LineError> {
    let id = match (&feature.id, feature.property("@id")) {
        (Some(Id::String(id)), _) => id.trim().to_string(),
        (Some(Id::Number(id)), _) => id.to_string(),
        (None, Some(Value::String(id))) => id.trim().to_string(),
        (None, Some(Value::Number(id))) => {
            match feature.property("@type").and_then(Value::as_str) {
                Some(kind) => format!("{kind}/{id}"),
                None => id.to_string(),
            }
        }
        _ => String::new(),
    };
    if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
        return Err((
            "bad_id",
            "no OSM id (export with ids: overpass-turbo does; osmium export \
             --add-unique-id=type_id or -a type,id)"
                .into(),
        ));
    }
    Ok(id)
}

fn admin_level(value: Option<&Value>) -> Result<Option<i32>, LineError> {
    let level = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text.trim().parse::<i32>().ok(),
        Some(Value::Number(number)) => number.as_i64().and_then(|n| i32::try_from(n).ok()),
        Some(_) => None,
    };
    match level {
        Some(level) if ADMIN_LEVELS.contains(&level) => Ok(Some(level)),
        _ => Err((
            "bad_admin_level",
            format!(
                "admin_level {} is not a level {}..={}",
                value.map(Value::to_string).unwrap_or_default(),
                ADMIN_LEVELS.start(),
                ADMIN_LEVELS.end()
            ),
        )),
    }
}

fn polygons(feature: &Feature) -> Result<Vec<Polygon>, LineError> {
    let Some(geometry) = &feature.geometry else {
        return Err((
            "bad_geometry",
            "no geometry (a Polygon or MultiPolygon)".into(),
        ));
    };
    let polygons = match &geometry.value {
        GeometryValue::Polygon { coordinates } => vec![polygon(coordinates)?],
        GeometryValue::MultiPolygon { coordinates } if !coordinates.is_empty() => coordinates
            .iter()
            .map(|rings| polygon(rings))
            .collect::<Result<_, _>>()?,
        other => {
            return Err((
                "bad_geometry",
                format!(
                    "a {}{}, not a Polygon or MultiPolygon",
                    other.type_name(),
                    if matches!(other, GeometryValue::MultiPolygon { .. }) {
                        " of nothing"
                    } else {
                        ""
                    }
                ),
            ));
        }
    };
    Ok(polygons)
}

fn polygon(rings: &[Vec<geojson::Position>]) -> Result<Polygon, LineError> {
    let mut rings = rings.iter().map(|ring| self::ring(ring));
    let outer = rings
        .next()
        .ok_or_else(|| ("bad_geometry", "a polygon without rings".to_string()))??;
    let holes = rings.collect::<Result<_, _>>()?;
    Ok(Polygon { outer, holes })
}

/// A linear ring: at least four positions, the last the first again.
fn ring(positions: &[geojson::Position]) -> Result<Ring, LineError> {
    let ring: Ring = positions
        .iter()
        .map(|position| match position.as_slice() {
            [lon, lat, ..] if (-180.0..=180.0).contains(lon) && (-90.0..=90.0).contains(lat) => {
                Ok(LonLat {
                    lon: *lon,
                    lat: *lat,
                })
            }
            other => Err((
                "bad_geometry",
                format!("{other:?} is not a position [longitude, latitude] in degrees"),
            )),
        })
        .collect::<Result<_, _>>()?;
    if ring.len() < 4 || ring.first() != ring.last() {
        return Err((
            "bad_geometry",
            format!(
                "a ring of {} positions: a ring has at least 4, its last the same as its first",
                ring.len()
            ),
        ));
    }
    Ok(ring)
}

/// WGS84.
const SEMI_MAJOR_M: f64 = 6_378_137.0;
const FLATTENING: f64 = 1.0 / 298.257_223_563;

/// The ellipsoid's eccentricity² and q at the pole, which give the authalic sphere: the
/// sphere of the ellipsoid's area, onto which latitudes map keeping every area.
fn authalic() -> (f64, f64) {
    let e2 = FLATTENING * (2.0 - FLATTENING);
    (e2, authalic_q(1.0, e2))
}

/// q(φ) of Snyder's "Map Projections: A Working Manual" (3-12), from sin φ.
fn authalic_q(sin_lat: f64, e2: f64) -> f64 {
    let e = e2.sqrt();
    let e_sin = e * sin_lat;
    (1.0 - e2)
        * (sin_lat / (1.0 - e2 * sin_lat * sin_lat)
            - ((1.0 - e_sin) / (1.0 + e_sin)).ln() / (2.0 * e))
}

/// A ring's area in m² on the ellipsoid: Green's theorem on the authalic sphere, whose
/// area element is R² d(sin β) dλ, so the shoelace formula over (λ, sin β) gives it.
fn ring_area_m2(ring: &Ring) -> f64 {
    let (e2, q_pole) = authalic();
    let radius2 = SEMI_MAJOR_M * SEMI_MAJOR_M * q_pole / 2.0;
    let sin_beta = |p: &LonLat| authalic_q(p.lat.to_radians().sin(), e2) / q_pole;
    let twice: f64 = ring
        .windows(2)
        .map(|edge| {
            let mut d_lon = (edge[1].lon - edge[0].lon).to_radians();
            // An edge across the antimeridian goes the short way round.
            if d_lon > PI {
                d_lon -= 2.0 * PI;
            } else if d_lon < -PI {
                d_lon += 2.0 * PI;
            }
            d_lon * (sin_beta(&edge[0]) + sin_beta(&edge[1]))
        })
        .sum();
    radius2 * twice.abs() / 2.0
}

fn polygon_area_m2(polygon: &Polygon) -> f64 {
    let holes: f64 = polygon.holes.iter().map(ring_area_m2).sum();
    (ring_area_m2(&polygon.outer) - holes).max(0.0)
}

/// The area-weighted centroid, on a plane tangent at the first position (longitudes
/// scaled by the cosine of its latitude): for polygons the size of a city the plane's
/// distortion is far below what placing a centroid in a boundary can tell.
fn centroid(polygons: &[Polygon]) -> LonLat {
    let origin = polygons[0].outer[0];
    let scale = origin.lat.to_radians().cos().max(1e-9);
    let plane = |p: &LonLat| {
        let mut d_lon = p.lon - origin.lon;
        if d_lon > 180.0 {
            d_lon -= 360.0;
        } else if d_lon < -180.0 {
            d_lon += 360.0;
        }
        (d_lon * scale, p.lat - origin.lat)
    };
    // Per ring: |area| and its centroid; holes weigh against their polygon.
    let (mut weight, mut x, mut y) = (0.0, 0.0, 0.0);
    for polygon in polygons {
        let rings =
            std::iter::once((&polygon.outer, 1.0)).chain(polygon.holes.iter().map(|h| (h, -1.0)));
        for (ring, sign) in rings {
            let (mut twice_area, mut cx, mut cy) = (0.0, 0.0, 0.0);
            for edge in ring.windows(2) {
                let (x0, y0) = plane(&edge[0]);
                let (x1, y1) = plane(&edge[1]);
                let cross = x0 * y1 - x1 * y0;
                twice_area += cross;
                cx += (x0 + x1) * cross;
                cy += (y0 + y1) * cross;
            }
            if twice_area == 0.0 {
                continue;
            }
            let area = twice_area / 2.0;
            let ring_weight = sign * area.abs();
            weight += ring_weight;
            x += ring_weight * cx / (6.0 * area);
            y += ring_weight * cy / (6.0 * area);
        }
    }
    if weight == 0.0 {
        return origin;
    }
    let mut lon = origin.lon + x / weight / scale;
    if lon > 180.0 {
        lon -= 360.0;
    } else if lon < -180.0 {
        lon += 360.0;
    }
    LonLat {
        lon,
        lat: origin.lat + y / weight,
    }
}

fn bbox(polygons: &[Polygon]) -> (f64, f64, f64, f64) {
    polygons.iter().flat_map(|p| &p.outer).fold(
        (
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ),
        |(west, south, east, north), p| {
            (
                west.min(p.lon),
                south.min(p.lat),
                east.max(p.lon),
                north.max(p.lat),
            )
        },
    )
}

/// Whether the boundary's polygons hold `point` (in a polygon's outer ring and in none of
/// its holes).
fn holds(boundary: &Boundary, point: LonLat) -> bool {
    let (west, south, east, north) = boundary.bbox;
    if point.lon < west || point.lon > east || point.lat < south || point.lat > north {
        return false;
    }
    boundary.polygons.iter().any(|polygon| {
        ring_holds(&polygon.outer, point)
            && !polygon.holes.iter().any(|hole| ring_holds(hole, point))
    })
}

/// Ray casting: a ray from `point` towards the east crosses the ring an odd number of
/// times when the point is inside.
fn ring_holds(ring: &Ring, point: LonLat) -> bool {
    let mut inside = false;
    for edge in ring.windows(2) {
        let (a, b) = (edge[0], edge[1]);
        if (a.lat > point.lat) != (b.lat > point.lat) {
            let crossing_lon = a.lon + (point.lat - a.lat) / (b.lat - a.lat) * (b.lon - a.lon);
            if point.lon < crossing_lon {
                inside = !inside;
            }
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(west: f64, south: f64, side: f64) -> Ring {
        vec![
            LonLat {
                lon: west,
                lat: south,
            },
            LonLat {
                lon: west + side,
                lat: south,
            },
            LonLat {
                lon: west + side,
                lat: south + side,
            },
            LonLat {
                lon: west,
                lat: south + side,
            },
            LonLat {
                lon: west,
                lat: south,
            },
        ]
    }

    #[test]
    fn a_hole_is_not_inside_and_takes_its_area_away() {
        let polygon = Polygon {
            outer: square(0.0, 0.0, 1.0),
            holes: vec![square(0.25, 0.25, 0.5)],
        };
        let boundary = Boundary {
            region: Arc::from("north"),
            area_km2: 0.0,
            bbox: bbox(std::slice::from_ref(&polygon)),
            polygons: vec![polygon],
        };
        assert!(holds(&boundary, LonLat { lon: 0.1, lat: 0.1 }));
        assert!(!holds(&boundary, LonLat { lon: 0.5, lat: 0.5 }));
        assert!(!holds(&boundary, LonLat { lon: 1.5, lat: 0.5 }));
        let whole = ring_area_m2(&square(0.0, 0.0, 1.0));
        let hole = ring_area_m2(&square(0.25, 0.25, 0.5));
        let area = polygon_area_m2(&boundary.polygons[0]);
        assert!((area - (whole - hole)).abs() < 1e-6 * whole);
        // A degree square at the equator: about 111.32 km × 110.57 km.
        assert!((whole / 1e6 - 12_308.8).abs() < 5.0, "{}", whole / 1e6);
    }

    #[test]
    fn the_authalic_sphere_has_the_ellipsoids_area() {
        // WGS84's surface: 510 065 621.7 km².
        let (_, q_pole) = authalic();
        let surface = 2.0 * PI * SEMI_MAJOR_M * SEMI_MAJOR_M * q_pole;
        assert!(
            (surface / 1e6 - 510_065_621.7).abs() < 1.0,
            "{}",
            surface / 1e6
        );
    }
}
