//! `cordon export` and `cordon import`: one user's memories as NDJSON.
//!
//! Both go through the HTTP API with that user's token, like any client, so
//! they work against any deployment and cannot touch another user: the token
//! is the only identity they have. An export pages through
//! `GET /v1/memories` and writes one memory per line into `<file>.partial`,
//! renamed to `<file>` only once the last page is written, so a cut-short
//! export never looks complete; the file is the user's plain text, so only
//! its owner may read it. An import checks every line against the rules it
//! can know before sending anything, then sends batches under an
//! `Idempotency-Key` derived from each batch's content, so running the same
//! import again after an interruption stores nothing twice.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Memories per page of an export (the API's largest page).
const EXPORT_PAGE: usize = 100;
/// Largest JSON body of one import batch; the server's default cap is 1 MiB.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Retries of one request answered 429 or 503, or not answered at all.
const RETRIES: u32 = 8;

/// Where the API is and whose token to use.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// Base URL of the Cordon server.
    #[arg(long, env = "CORDON_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The user's bearer token (the memories moved are this token's user's).
    #[arg(long, env = "CORDON_TOKEN", hide_env_values = true)]
    token: Secret,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

/// Flags of `cordon export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    connection: Connection,
    /// The NDJSON file to write (`-`: standard output).
    #[arg(long, short, default_value = "-")]
    output: PathBuf,
}

/// Flags of `cordon import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    connection: Connection,
    /// The NDJSON file to read (`-`: standard input): one object per line
    /// with `text` and optional `metadata`, as `cordon export` writes.
    #[arg(long, short, default_value = "-")]
    input: PathBuf,
    /// Memories per request (at most the server's `CORDON_MAX_ITEMS`). A
    /// re-run stores nothing twice only with the same file and batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Longest text accepted, in bytes (the server's `CORDON_MAX_TEXT_BYTES`),
    /// checked before anything is sent.
    #[arg(long, default_value_t = 8192)]
    max_text_bytes: usize,
}

/// Why an export or import stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The server could not be reached, or kept answering 429/503.
    #[error("{0}")]
    Unreachable(String),
    /// The server refused a request; its error body is quoted.
    #[error("{method} {path} answered {status}: {body}")]
    Refused {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The status.
        status: StatusCode,
        /// The response body (the API's JSON error).
        body: String,
    },
    /// A response was not the shape the API documents.
    #[error("unexpected response from {0}")]
    Unexpected(String),
    /// A line of the input is not a memory.
    #[error("line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The async runtime or HTTP client could not start.
    #[error("cannot start: {0}")]
    Start(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs `cordon export`.
pub fn export(args: ExportArgs) -> ExitCode {
    finish("export", block_on(export_run(args)))
}

/// Runs `cordon import`.
pub fn import(args: ImportArgs) -> ExitCode {
    finish("import", block_on(import_run(args)))
}

fn finish(command: &str, outcome: Result<String, TransferError>) -> ExitCode {
    match outcome {
        Ok(summary) => {
            eprintln!("cordon {command}: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cordon {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn block_on<T>(future: impl Future<Output = Result<T, TransferError>>) -> Result<T, TransferError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TransferError::Start(e.to_string()))?
        .block_on(future)
}

/// The API as one user sees it.
struct Api {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl Api {
    fn new(connection: Connection) -> Result<Self, TransferError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(connection.timeout_secs))
            .build()
            .map_err(|e| TransferError::Start(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: connection.url.trim_end_matches('/').to_owned(),
            token: connection.token,
        })
    }

    /// Sends a request, retrying what the API marks as retryable (429 and
    /// 503 with `Retry-After`) and requests that got no answer. Only
    /// requests that are safe to repeat come here: reads, and stores under
    /// an `Idempotency-Key`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, TransferError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(String::from_utf8_lossy(self.token.expose()));
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let wait = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return response
                        .json()
                        .await
                        .map_err(|_| TransferError::Unexpected(url.clone()));
                }
                Ok(response)
                    if matches!(
                        response.status(),
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    ) && attempt <= RETRIES =>
                {
                    retry_after(&response).unwrap_or(Duration::from_secs(1))
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(TransferError::Refused {
                        method,
                        path: path.to_owned(),
                        status,
                        body,
                    });
                }
                Err(e) if attempt <= RETRIES => {
                    tracing::debug!(error = %e, "request failed; retrying");
                    Duration::from_millis(250 << attempt.min(5))
                }
                Err(e) => return Err(TransferError::Unreachable(format!("{url}: {e}"))),
            };
            tokio::time::sleep(wait).await;
        }
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

/// One line of the NDJSON format.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    /// The id the memory had where it was exported (an import assigns new
    /// ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<Map<String, Value>>,
    /// Milliseconds since the epoch at the original store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
}

/// A bar with a known length, or a counter when the length is unknown; on
/// a non-terminal neither draws, and the summary line says the outcome.
fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what} ({{per_sec}})")
    } else {
        format!("{{elapsed_precise}} {{spinner}} {{pos}} {what} ({{per_sec}})")
    };
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar
}

async fn export_run(args: ExportArgs) -> Result<String, TransferError> {
    let api = Api::new(args.connection)?;
    let to_stdout = args.output.as_os_str() == "-";
    let partial = partial_path(&args.output);
    let result = export_to(&api, &args.output, &partial, to_stdout).await;
    if result.is_err() && !to_stdout {
        // A cut-short export leaves nothing that could pass for one.
        let _ = std::fs::remove_file(&partial);
    }
    result
}

async fn export_to(
    api: &Api,
    output: &Path,
    partial: &Path,
    to_stdout: bool,
) -> Result<String, TransferError> {
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(partial)
            .map_err(io_error(partial))?;
        Box::new(std::io::BufWriter::new(file))
    };
    let progress = bar(None, "memories");
    let mut cursor: Option<String> = None;
    let mut written = 0u64;
    loop {
        let mut path = format!("/v1/memories?limit={EXPORT_PAGE}");
        if let Some(c) = &cursor {
            path.push_str("&cursor=");
            path.push_str(c);
        }
        let page = api.send(Method::GET, &path, None, None).await?;
        let unexpected = || TransferError::Unexpected(path.clone());
        let memories = page["memories"].as_array().ok_or_else(unexpected)?;
        for memory in memories {
            let line: Line = serde_json::from_value(memory.clone()).map_err(|_| unexpected())?;
            serde_json::to_writer(&mut out, &line).map_err(|_| unexpected())?;
            out.write_all(b"\n").map_err(io_error(partial))?;
            written += 1;
        }
        progress.set_position(written);
        match &page["next_cursor"] {
            Value::String(next) => cursor = Some(next.clone()),
            Value::Null => break,
            _ => return Err(unexpected()),
        }
    }
    out.flush().map_err(io_error(partial))?;
    drop(out);
    progress.finish_and_clear();
    if to_stdout {
        return Ok(format!("exported {written} memories"));
    }
    std::fs::File::open(partial)
        .and_then(|f| f.sync_all())
        .map_err(io_error(partial))?;
    std::fs::rename(partial, output).map_err(io_error(output))?;
    Ok(format!(
        "exported {written} memories to {}",
        output.display()
    ))
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Reads every line and checks what can be checked here (a text that is
/// not blank and not too long, metadata keys), so that such a line stops the
/// import before its first write rather than halfway. Returns each memory
/// with its line number.
fn read_lines(input: &Path, max_text_bytes: usize) -> Result<Vec<(usize, Value)>, TransferError> {
    let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(input).map_err(io_error(input))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut items = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io_error(input))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TransferError::BadLine {
            line: i + 1,
            reason,
        };
        let parsed: Line = serde_json::from_str(&line).map_err(|e| {
            bad(format!(
                "not a memory (`text` and optional `metadata` object): {e}"
            ))
        })?;
        if parsed.text.trim().is_empty() {
            return Err(bad("`text` is blank".into()));
        }
        if parsed.text.len() > max_text_bytes {
            return Err(bad(format!(
                "`text` is {} bytes; the limit is {max_text_bytes} (--max-text-bytes)",
                parsed.text.len()
            )));
        }
        let mut item = json!({ "text": parsed.text });
        if let Some(metadata) = parsed.metadata {
            if let Some(key) = metadata.keys().find(|k| !crate::api::is_metadata_key(k)) {
                return Err(bad(format!(
                    "metadata key `{key}` is not 1 to 64 of A-Z, a-z, 0-9, `_` or `-`"
                )));
            }
            item["metadata"] = Value::Object(metadata);
        }
        items.push((i + 1, item));
    }
    Ok(items)
}

/// Splits into batches of at most `max` items and [`MAX_BATCH_BYTES`].
fn batches<T>(items: Vec<(T, Value)>, max: usize) -> Vec<Vec<(T, Value)>> {
    let mut out: Vec<Vec<(T, Value)>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = item.1.to_string().len() + 1;
        match out.last_mut() {
            Some(batch) if batch.len() < max && bytes + size <= MAX_BATCH_BYTES => {
                batch.push(item);
                bytes += size;
            }
            _ => {
                out.push(vec![item]);
                bytes = size;
            }
        }
    }
    out
}

/// The batch's `Idempotency-Key`: a digest of its body, so the same batch
/// (on a re-run) gets the same key and a different one never does.
fn batch_key(body: &Value) -> String {
    let digest = Sha256::digest(body.to_string().as_bytes());
    format!("cordon-import-{}", hex::encode(&digest[..16]))
}

async fn import_run(args: ImportArgs) -> Result<String, TransferError> {
    if args.batch == 0 {
        return Err(TransferError::Start("--batch must be at least 1".into()));
    }
    let items = read_lines(&args.input, args.max_text_bytes)?;
    let total = items.len();
    let api = Api::new(args.connection)?;
    let progress = bar(Some(total as u64), "memories");
    let mut done = 0;
    for batch in batches(items, args.batch) {
        let n = batch.len();
        let lines = (batch[0].0, batch[n - 1].0);
        let memories: Vec<Value> = batch.into_iter().map(|(_, item)| item).collect();
        let body = json!({ "memories": memories });
        let key = batch_key(&body);
        let answer = api
            .send(Method::POST, "/v1/memories", Some(&body), Some(&key))
            .await
            .inspect_err(|e| {
                progress.abandon();
                let refused = matches!(e, TransferError::Refused { status, .. } if status.is_client_error());
                let hint = if refused {
                    format!(
                        "the server refused lines {} to {} (none of them was stored); fix them and run the same import again",
                        lines.0, lines.1
                    )
                } else {
                    "run the same import again to continue".to_owned()
                };
                eprintln!("cordon import: {done} of {total} memories stored before this error; {hint}");
            })?;
        let ids = answer["ids"].as_array().map_or(0, Vec::len);
        if ids != n {
            return Err(TransferError::Unexpected("/v1/memories".into()));
        }
        done += n;
        progress.set_position(done as u64);
    }
    progress.finish_and_clear();
    Ok(format!("imported {done} memories"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_count_and_the_byte_cap() {
        let small: Vec<(usize, Value)> = (0..70)
            .map(|i| (i, json!({ "text": format!("m{i}") })))
            .collect();
        let sizes: Vec<usize> = batches(small, 32).iter().map(Vec::len).collect();
        assert_eq!(sizes, [32, 32, 6]);
        let big: Vec<(usize, Value)> = (0..5)
            .map(|i| (i, json!({ "text": "x".repeat(200 * 1024) })))
            .collect();
        let sizes: Vec<usize> = batches(big, 32).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn the_same_batch_gets_the_same_key_and_another_batch_another() {
        let a = json!({ "memories": [{ "text": "a" }] });
        let b = json!({ "memories": [{ "text": "b" }] });
        assert_eq!(batch_key(&a), batch_key(&a.clone()));
        assert_ne!(batch_key(&a), batch_key(&b));
        assert!(batch_key(&a).len() <= 255);
    }
}
