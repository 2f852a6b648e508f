//! Which Canopy region a source's own place names: a weather station, a country, an
//! administrative boundary. Sources know nothing of Canopy's regions, so the operator
//! says, and a place the map leaves out is imported with no region rather than refused.

use std::collections::HashMap;

use super::reading::csv_fields;
use crate::AnalyticsError;

/// Source region id (a GHCN station id, an ISO 3166-1 alpha-3 country code, an ISO 3166-2
/// code or a boundary's name) → Canopy region name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionMap {
    regions: HashMap<String, String>,
}

/// Longer source ids are not place names of any of the sources.
const MAX_SOURCE_REGION_CHARS: usize = 256;
const MAX_REGION_CHARS: usize = 64;

impl RegionMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `source_region` to `region` (1 to 64 of `A-Z a-z 0-9 _ . -`). Mapping a source
    /// region again to the same region changes nothing; to another is refused, as one of
    /// the two would be lost without anyone noticing.
    pub fn insert(&mut self, source_region: &str, region: &str) -> Result<(), AnalyticsError> {
        let source_region = source_region.trim();
        let region = region.trim();
        if source_region.is_empty() || source_region.chars().count() > MAX_SOURCE_REGION_CHARS {
            return Err(AnalyticsError::RegionMap(format!(
                "source region {source_region:?}: 1 to {MAX_SOURCE_REGION_CHARS} characters"
            )));
        }
        if source_region.chars().any(char::is_control) {
            return Err(AnalyticsError::RegionMap(format!(
                "source region {source_region:?} holds a control character"
            )));
        }
        let valid_region = (1..=MAX_REGION_CHARS).contains(&region.len())
            && region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid_region {
            return Err(AnalyticsError::RegionMap(format!(
                "region {region:?} (for {source_region:?}): 1 to {MAX_REGION_CHARS} of \
                 A-Z a-z 0-9 _ . -"
            )));
        }
        match self.regions.get(source_region) {
            Some(mapped) if mapped != region => Err(AnalyticsError::RegionMap(format!(
                "{source_region:?} is mapped to both {mapped:?} and {region:?}"
            ))),
            Some(_) => Ok(()),
            None => {
                self.regions
                    .insert(source_region.to_string(), region.to_string());
                Ok(())
            }
        }
    }

    /// Lines `source_region,region` (a field may be quoted, for names with commas), an
    /// optional header `source_region,region`, blank lines and `#` comments.
    pub fn parse_csv(text: &str) -> Result<Self, AnalyticsError> {
        let mut map = Self::new();
        let mut seen_data = false;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at_line =
                |reason: String| AnalyticsError::RegionMap(format!("line {number}: {reason}"));
            let fields = csv_fields(line).map_err(at_line)?;
            let [source_region, region] = fields.as_slice() else {
                return Err(at_line(format!(
                    "expected `source_region,region`, found {} field(s)",
                    fields.len()
                )));
            };
            let header = source_region.trim().eq_ignore_ascii_case("source_region")
                && region.trim().eq_ignore_ascii_case("region");
            if header && !seen_data {
                seen_data = true;
                continue;
            }
            seen_data = true;
            map.insert(source_region, region).map_err(|e| match e {
                AnalyticsError::RegionMap(reason) => at_line(reason),
                other => other,
            })?;
        }
        Ok(map)
    }

    /// The Canopy region `source_region` is mapped to.
    pub fn get(&self, source_region: &str) -> Option<&str> {
        self.regions.get(source_region).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.regions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}
