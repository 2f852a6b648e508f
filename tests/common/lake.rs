//! The analytics lake and the record's tiles of a cluster in the S3-compatible server
//! `scripts/test` starts (moto), and SQL asked of a serve replica.

#[path = "../../analytics/tests/common/s3.rs"]
pub mod s3;

/// What points a process at the test's lake: the bucket, the `AWS_*` variables object_store
/// reads, a short flush, frequent compaction, and k = 1 so that every tally change is
/// written (the recount is compared cell by cell).
pub fn lake_env(url: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = s3::s3_options()
        .into_iter()
        .map(|(key, value)| (key.to_ascii_uppercase(), value))
        .collect();
    env.push(("CANOPY_LAKE__LOCATION".into(), url.into()));
    env.push(("CANOPY_LAKE__FLUSH_S".into(), "0.3".into()));
    // Process 0 compacts every second, while process 1 writes.
    env.push(("CANOPY_LAKE__COMPACT_EVERY".into(), "3".into()));
    env.push(("CANOPY_API__TREND_MIN_VOTERS".into(), "1".into()));
    env
}

/// [`lake_env`] with the record's tiles in the bucket too, under a prefix of their own.
pub fn lake_and_tiles_env(url: &str) -> Vec<(String, String)> {
    let mut env = lake_env(url);
    env.push(("CANOPY_RECORD__TILE_STORE".into(), format!("{url}-record")));
    env
}

/// The rows `statement` gives on the replica at `base` (as `token`, an analyst or admin),
/// as CSV fields, header left out.
pub async fn sql_rows(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    statement: &str,
) -> Vec<Vec<String>> {
    sql_csv(client, base, token, statement)
        .await
        .lines()
        .skip(1)
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect()
}

/// The CSV (header first) `statement` gives on the replica at `base`, as `token`.
pub async fn sql_csv(client: &reqwest::Client, base: &str, token: &str, statement: &str) -> String {
    let response = client
        .post(format!("{base}/api/v1/analytics/sql"))
        .bearer_auth(token)
        .json(&serde_json::json!({"sql": statement, "format": "csv"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{statement}: {body}");
    body
}
