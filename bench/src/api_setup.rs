//! What the benchmarks that drive a node over HTTP set up the same way: a decision made
//! through the API.

use anyhow::{Context, bail};
use serde_json::Value;

/// Creates a decision through `base`'s API as `token`'s account; its id.
pub async fn create_decision(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<String> {
    let response = client
        .post(format!("{base}/api/v1/voting/decision/create"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::CREATED {
        bail!("creating a decision failed: {}", response.text().await?);
    }
    Ok(response.json::<Value>().await?["id"]
        .as_str()
        .context("the created decision has no id")?
        .to_string())
}
