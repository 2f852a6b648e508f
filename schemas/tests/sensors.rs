//! Sensor readings: validation against the registry with a typed error per fault, the
//! canonical encoding, and event-time parsing.

use canopy_schemas::*;
use proptest::prelude::*;

const NOW: i64 = 1_780_272_000_000;

fn registry() -> SensorRegistry {
    let mut registry = SensorRegistry::new();
    registry
        .insert(Sensor {
            sensor_id: "aq-7".into(),
            region: "delta".into(),
            latitude: 51.9,
            longitude: 4.5,
            metrics: vec![Metric::Pm25, Metric::Temperature],
        })
        .unwrap();
    registry
}

fn raw<'a>() -> RawReading<'a> {
    RawReading {
        sensor_id: "aq-7",
        region: Some("delta"),
        metric: "PM2.5",
        unit: Some("ug/m3"),
        value: 17.25,
        observed_at: NOW - 60_000,
        quality: None,
    }
}

#[test]
fn a_good_reading_is_normalised() {
    let reading = registry().validate(&raw(), NOW).unwrap();
    assert_eq!(reading.metric, Metric::Pm25);
    assert_eq!(reading.value_micro, 17_250_000);
    assert_eq!(reading.region, "delta");
    assert_eq!(reading.quality, Quality::Ok);
    // The registry's region applies when the row names none.
    let reading = registry()
        .validate(
            &RawReading {
                region: None,
                ..raw()
            },
            NOW,
        )
        .unwrap();
    assert_eq!(reading.region, "delta");
}

#[test]
fn each_fault_has_its_own_code() {
    let registry = registry();
    let code = |raw: RawReading<'_>| registry.validate(&raw, NOW).unwrap_err().code();
    assert_eq!(
        code(RawReading {
            metric: "radon",
            ..raw()
        }),
        "unknown_metric"
    );
    assert_eq!(
        code(RawReading {
            value: f64::NAN,
            ..raw()
        }),
        "non_finite_value"
    );
    assert_eq!(
        code(RawReading {
            value: f64::INFINITY,
            ..raw()
        }),
        "non_finite_value"
    );
    assert_eq!(
        code(RawReading {
            value: 9_000.0,
            ..raw()
        }),
        "implausible_value"
    );
    assert_eq!(
        code(RawReading {
            unit: Some("ppm"),
            ..raw()
        }),
        "wrong_unit"
    );
    assert_eq!(
        code(RawReading {
            observed_at: NOW + 6 * 60_000,
            ..raw()
        }),
        "reading_in_future"
    );
    assert_eq!(
        code(RawReading {
            sensor_id: "aq-8",
            ..raw()
        }),
        "unknown_sensor"
    );
    assert_eq!(
        code(RawReading {
            metric: "no2",
            ..raw()
        }),
        "metric_not_reported"
    );
    assert_eq!(
        code(RawReading {
            region: Some("hills"),
            ..raw()
        }),
        "wrong_region"
    );
    assert_eq!(
        code(RawReading {
            quality: Some("meh"),
            ..raw()
        }),
        "unknown_quality"
    );
    // Clock skew of a few minutes is not the future.
    assert!(
        registry
            .validate(
                &RawReading {
                    observed_at: NOW + 60_000,
                    ..raw()
                },
                NOW
            )
            .is_ok()
    );
}

#[test]
fn units_are_matched_in_the_spellings_exports_use() {
    for unit in ["µg/m³", "μg/m³", "ug/m3", "UG/M3", "µg/m3", "ug m-3"] {
        assert!(Metric::Pm25.accepts_unit(unit), "{unit}");
    }
    for unit in ["°C", "C", "degC"] {
        assert!(Metric::Temperature.accepts_unit(unit), "{unit}");
    }
    assert!(!Metric::Temperature.accepts_unit("°F"));
    assert!(!Metric::Co.accepts_unit("µg/m³"));
}

#[test]
fn sensors_are_checked_on_registration() {
    let mut registry = SensorRegistry::new();
    let sensor = Sensor {
        sensor_id: "x".into(),
        region: "r".into(),
        latitude: 10.0,
        longitude: 10.0,
        metrics: vec![Metric::Pm25],
    };
    let latitude_out_of_range = Sensor {
        latitude: 91.0,
        ..sensor.clone()
    };
    let no_metrics = Sensor {
        metrics: vec![],
        ..sensor.clone()
    };
    let a_metric_twice = Sensor {
        metrics: vec![Metric::O3, Metric::O3],
        ..sensor.clone()
    };
    let no_name = Sensor {
        sensor_id: String::new(),
        ..sensor.clone()
    };
    for (bad, code) in [
        (latitude_out_of_range, "sensor_location"),
        (no_metrics, "sensor_metrics"),
        (a_metric_twice, "sensor_metrics"),
        (no_name, "sensor_name"),
    ] {
        assert_eq!(validate_sensor(&bad).unwrap_err().code(), code, "{bad:?}");
    }
    registry.insert(sensor).unwrap();
    assert_eq!(registry.len(), 1);
}

#[test]
fn event_times_parse_from_rfc3339_and_epoch_milliseconds() {
    for (text, millis) in [
        ("2026-06-01T00:00:00Z", 1_780_272_000_000),
        ("2026-06-01T10:06:00.000Z", 1_780_308_360_000),
        ("2026-06-01 12:06:00+02:00", 1_780_308_360_000),
        ("2024-02-29T23:59:59Z", 1_709_251_199_000),
        ("1999-12-31T12:00:00.5Z", 946_641_600_500),
        ("1999-12-31T12:00:00.123456Z", 946_641_600_123),
        ("1780272000000", 1_780_272_000_000),
    ] {
        assert_eq!(parse_event_time(text).unwrap(), millis, "{text}");
    }
    for bad in [
        "",
        "yesterday",
        "2026-02-30T00:00:00Z",
        "2026-06-01T25:00:00Z",
        "2026-06-01T00:00:00+2",
        "2026-06-01T00:00:00.",
    ] {
        assert_eq!(
            parse_event_time(bad).unwrap_err().code(),
            "bad_timestamp",
            "{bad}"
        );
    }
}

fn any_reading() -> impl Strategy<Value = SensorReading> {
    (
        "[a-z0-9-]{1,40}",
        "[a-zA-Z ]{1,30}",
        0..Metric::ALL.len(),
        any::<i64>(),
        any::<i64>(),
        0..3u8,
    )
        .prop_map(
            |(sensor_id, region, metric, value_micro, observed_at, quality)| SensorReading {
                sensor_id,
                region,
                metric: Metric::ALL[metric],
                value_micro,
                observed_at,
                quality: Quality::from_code(quality).unwrap(),
            },
        )
}

proptest! {
    #[test]
    fn the_encoding_round_trips(reading in any_reading()) {
        let mut bytes = Vec::new();
        reading.encode_into(&mut bytes);
        prop_assert_eq!(SensorReading::decode(&bytes).unwrap(), reading.clone());
        // Any truncation is refused, never misread.
        for cut in 0..bytes.len() {
            prop_assert!(SensorReading::decode(&bytes[..cut]).is_err());
        }
    }
}
