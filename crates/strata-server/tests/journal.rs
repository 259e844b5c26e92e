//! A damaged write-behind journal stops `strata serve` with an error that names the file and the byte offset,
//! and `--recover-journal` starts anyway, keeping the intact records (and a copy of the damaged file). Runs the
//! embedded default: no services needed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "strata-journal-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Starts `strata serve` on `dir`; `Ok((child, base url))` once it listens, `Err(stderr)` if it exits first.
fn serve(dir: &Path, extra: &[&str]) -> Result<(Child, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env_remove("STRATA_TOKEN")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.wait();
            return Err(seen.join("\n"));
        };
        if let Some(rest) = line.strip_prefix("strata listening on ") {
            let base = rest.split_whitespace().next().unwrap().to_owned();
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return Ok((child, base));
        }
        seen.push(line);
    }
}

fn call(method: &str, url: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .unwrap();
    let mut resp = agent.run(req).unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

fn journal_file(dir: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "log")
                && std::fs::metadata(p).map(|m| m.len() > 200).unwrap_or(false)
        })
        .collect();
    logs.sort();
    logs.pop().expect("a journal file with records")
}

#[test]
fn a_damaged_journal_stops_the_start_and_recover_journal_keeps_the_intact_writes() {
    let dir = data_dir("damaged");
    let (mut child, base) = serve(&dir, &[]).expect("first start");
    for i in 0..10 {
        let (status, body) = call(
            "PUT",
            &format!("{base}/v1/counter/c{i}"),
            &format!(r#"{{"n": {i}}}"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // One flipped byte in the middle of the journal.
    let file = journal_file(&dir);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();

    let err = serve(&dir, &[]).expect_err("a damaged journal must stop the start");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("damaged at byte"), "{err}");
    assert!(err.contains("--recover-journal"), "{err}");
    assert!(PathBuf::from(format!("{}.damaged", file.display())).exists());

    let (mut child, base) = serve(&dir, &["--recover-journal"]).expect("--recover-journal starts");
    let (status, body) = call("GET", &format!("{base}/v1/counter/c0"), "");
    assert_eq!((status, body.contains(r#""n":0"#)), (200, true), "{body}");
    let (status, body) = call("GET", &format!("{base}/v1/counter/c9"), "");
    assert_eq!((status, body.contains(r#""n":9"#)), (200, true), "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
    // The rewritten journal is clean: a plain start works again.
    let (mut child, _) = serve(&dir, &[]).expect("a clean start after recovery");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
