//! `weir sql "…"`: runs a query on a running Weir (`POST /v1/sql`) and prints the result
//! as a table, CSV or JSON.

use anyhow::{bail, Context};
use serde_json::Value;

/// How to print.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Output {
    Table,
    Csv,
    Json,
}

pub fn run(url: &str, sql: &str, output: Output) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let accept = match output {
            Output::Csv => "text/csv",
            _ => "application/json",
        };
        let endpoint = format!("{}/v1/sql", url.trim_end_matches('/'));
        let resp = reqwest::Client::new()
            .post(&endpoint)
            .header("accept", accept)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .with_context(|| format!("is Weir running at {url}? (--url)"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["message"].as_str().map(str::to_string)).unwrap_or(text);
            bail!("{message}");
        }
        match output {
            Output::Csv | Output::Json => print!("{text}"),
            Output::Table => print!("{}", table(&serde_json::from_str(&text).context("reading the result")?)),
        }
        if matches!(output, Output::Json) {
            println!();
        }
        Ok(())
    })
}

/// The result as an aligned text table.
fn table(result: &Value) -> String {
    let names: Vec<String> = result["columns"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(str::to_string)).collect();
    let rows: Vec<Vec<String>> = result["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            names
                .iter()
                .map(|n| match &r[n] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..names.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([names[i].chars().count()]).max().unwrap_or(0)).collect();
    let line = |cells: &[String]| cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join(" | ").trim_end().to_string() + "\n";
    let mut out = line(&names);
    out.push_str(&(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-") + "\n"));
    for r in &rows {
        out.push_str(&line(r));
    }
    out.push_str(&format!("({} row{})\n", rows.len(), if rows.len() == 1 { "" } else { "s" }));
    out
}
