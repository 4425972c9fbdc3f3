//! `GET /api/records/{client_id}`: the newest lines of the records log that name one client,
//! so the demo page can show its own trail through the replicas. Reads only the file's tail
//! (at most [`TAIL_BYTES`]) on a blocking thread; writing the log is `records.rs`'s, and
//! which lines matter to a person is the page's.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::AppState;
use super::api::authorize;
use super::error::ApiError;
use super::extract::ClientPath;

/// How much of the log's end is read: enough for the last minutes of a demo, and a bound on
/// the work one request can cause however large the file has grown.
const TAIL_BYTES: u64 = 256 * 1024;
/// Lines returned at most: what a panel on the page can show.
const MAX_LINES: usize = 50;

/// The answer: this replica, the lines (oldest first), and whether older ones were cut.
pub(super) async fn tail(
    State(state): State<AppState>,
    ClientPath(client): ClientPath,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, &client)?;
    let Some(path) = state.config.records_log.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "records_off",
            "the records log is off on this replica (RECORDS_LOG=off)",
        ));
    };
    let id = client.as_str().to_owned();
    let read = tokio::task::spawn_blocking(move || lines_naming(&path, &id, TAIL_BYTES, MAX_LINES))
        .await
        .map_err(|err| {
            tracing::error!(cause = %err, "records tail task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "reading the records log failed",
            )
        })?;
    let lines = read.map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "records_missing",
                "the records log file is gone (removed since this replica started)",
            )
        } else {
            tracing::error!(cause = %err, "reading the records log failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "records_unreadable",
                "the records log could not be read",
            )
        }
    })?;
    Ok(Json(json!({
        "replica": &*state.replica,
        "client_id": client.as_str(),
        "lines": lines,
        "max_lines": MAX_LINES,
    })))
}

/// The last `max_lines` lines among the file's last `budget` bytes whose client column is
/// exactly `client`, oldest first. A line cut by the budget's start is skipped, never shown
/// half; bytes that are not UTF-8 are replaced, since the log is for reading.
fn lines_naming(
    path: &Path,
    client: &str,
    budget: u64,
    max_lines: usize,
) -> std::io::Result<Vec<String>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(budget);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.take(budget).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if start > 0 && !lines.is_empty() {
        // Starts mid-line unless the byte before the budget ended one; dropping it is simpler
        // than reading one byte more, and loses at most one line of a file this large.
        lines.remove(0);
    }
    let mut named: Vec<String> = lines
        .into_iter()
        .filter(|line| line.split(" | ").nth(3).map(str::trim) == Some(client))
        .map(str::to_owned)
        .collect();
    let cut = named.len().saturating_sub(max_lines);
    Ok(named.split_off(cut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn log(lines: &[String]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
        file
    }

    fn line(n: usize, client: &str) -> String {
        format!("2026-12-02T04:00:00.{n:03}Z | app-1 | publish         | {client} | #{n}")
    }

    #[test]
    fn only_lines_whose_client_column_is_the_client_are_returned() {
        let file = log(&[
            line(1, "abc"),
            line(2, "abcd"),
            line(3, "-"),
            "2026-12-02 | app-2 | connect | xyz | detail names abc".to_owned(),
            line(4, "abc"),
        ]);
        let got = lines_naming(file.path(), "abc", TAIL_BYTES, MAX_LINES).unwrap();
        assert_eq!(got, vec![line(1, "abc"), line(4, "abc")]);
    }

    #[test]
    fn at_most_the_newest_max_lines_are_returned_oldest_first() {
        let all: Vec<String> = (0..120).map(|n| line(n, "abc")).collect();
        let file = log(&all);
        let got = lines_naming(file.path(), "abc", TAIL_BYTES, 50).unwrap();
        assert_eq!(got, all[70..].to_vec());
    }

    #[test]
    fn only_the_budget_at_the_end_of_the_file_is_read_and_no_line_is_shown_cut() {
        let all: Vec<String> = (0..1000).map(|n| line(n, "abc")).collect();
        let file = log(&all);
        let one = all[0].len() as u64 + 1;
        // Ten and a half lines' worth: the half line at the start is dropped.
        let got = lines_naming(file.path(), "abc", one * 10 + one / 2, 50).unwrap();
        assert_eq!(got, all[990..].to_vec());
    }

    #[test]
    fn bytes_that_are_not_utf8_do_not_fail_the_read() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"t | app-1 | ws-recv | abc | \xff\xfe\n")
            .unwrap();
        let got = lines_naming(file.path(), "abc", TAIL_BYTES, MAX_LINES).unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn a_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = lines_naming(&dir.path().join("gone.log"), "abc", TAIL_BYTES, 50).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
