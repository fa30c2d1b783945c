//! `sluice status`: a running sluice's `/status.json`, printed as its status page says it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sluice::http::{Deadlines, read_capped};
use sluice::server::status::{model::Status, text};

/// The most a status answer may hold.
const MAX_BYTES: usize = 4 << 20;

/// Reads `server`'s status and prints it (as text, or the JSON with `json`).
pub fn print(out: &mut impl Write, server: &str, json: bool) -> anyhow::Result<ExitCode> {
    let url = format!("{}/status.json", server.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = runtime.block_on(fetch(&url)).with_context(|| format!("reading {url} (is sluice running there?)"))?;
    let body = body.as_ref();
    if json {
        out.write_all(body)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let status: Status = serde_json::from_slice(body).with_context(|| format!("{url} did not answer a status"))?;
    out.write_all(text::render(&status).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// GET `url` within 10 s, refusing a non-2xx answer or one over [`MAX_BYTES`].
async fn fetch(url: &str) -> anyhow::Result<impl AsRef<[u8]>> {
    let deadlines = Deadlines::SMALL.with_total(Duration::from_secs(10));
    let client = deadlines.apply(sluice::http::client_builder()).no_proxy().build()?;
    let answer = client.get(url).send().await?;
    anyhow::ensure!(answer.status().is_success(), "answered HTTP {}", answer.status());
    Ok(read_capped(answer, MAX_BYTES, "the status answer").await?)
}
