//! The binary's own log (issue 17): no colour codes when stderr is not a terminal,
//! and one JSON object per line with `SANDTRAIL_LOG_FORMAT=json`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first `n` lines the standalone indexer writes to stderr with `format`.
fn first_log_lines(format: &str, n: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandtrail"))
        .args(["indexer", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("SANDTRAIL_LOG", "info")
        .env("SANDTRAIL_LOG_FORMAT", format)
        .env_remove("SANDTRAIL_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), n, "the indexer logged only {lines:?}");
    lines
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    for line in first_log_lines("", 2) {
        assert!(!line.contains('\u{1b}'), "colour code in {line:?}");
        assert!(line.contains("INFO") || line.contains("WARN"), "{line:?}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    for line in first_log_lines("json", 2) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
    }
}
