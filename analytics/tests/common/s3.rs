//! The S3-compatible server the tests write lakes to: `scripts/test` starts one (moto, from
//! PyPI) and names its endpoint in CANOPY_TEST_S3 and its bucket in CANOPY_TEST_S3_BUCKET.
//! Every lake gets a prefix of its own; the server outlives the run.
// Shared by several test crates, each of which uses only some of it.
#![allow(dead_code)]

use canopy_analytics::LakeLocation;

/// The options that point a lake at the test server.
pub fn s3_options() -> Vec<(&'static str, String)> {
    let endpoint = std::env::var("CANOPY_TEST_S3").expect(
        "CANOPY_TEST_S3 must name an S3-compatible server's endpoint (scripts/test starts one)",
    );
    vec![
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", "canopy-test".into()),
        ("aws_secret_access_key", "canopy-test".into()),
        ("aws_region", "us-east-1".into()),
    ]
}

/// `s3://<test bucket>/<a prefix of its own>`.
pub fn s3_url() -> String {
    let bucket = std::env::var("CANOPY_TEST_S3_BUCKET").unwrap_or_else(|_| "canopy-test".into());
    format!(
        "s3://{bucket}/lake-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// A new, empty lake in the test bucket.
pub fn s3_lake() -> LakeLocation {
    LakeLocation::s3(&s3_url(), s3_options()).expect("the test server's lake location")
}
