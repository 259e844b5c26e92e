//! A damaged write-behind journal stops `strata serve` with an error that names the file and the byte offset,
//! and `--recover-journal` starts anyway, keeping the intact records (and a copy of the damaged file). Runs the
//! embedded default: no services needed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{call, data_dir, serve};

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
    let server = serve(&dir, &[]).expect("first start");
    let base = server.base.clone();
    for i in 0..10 {
        let (status, body) = call(
            "PUT",
            &format!("{base}/v1/counter/c{i}"),
            &format!(r#"{{"n": {i}}}"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(server); // SIGKILL

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

    let server = serve(&dir, &["--recover-journal"]).expect("--recover-journal starts");
    let base = server.base.clone();
    let (status, body) = call("GET", &format!("{base}/v1/counter/c0"), "");
    assert_eq!((status, body.contains(r#""n":0"#)), (200, true), "{body}");
    let (status, body) = call("GET", &format!("{base}/v1/counter/c9"), "");
    assert_eq!((status, body.contains(r#""n":9"#)), (200, true), "{body}");
    drop(server);
    // The rewritten journal is clean: a plain start works again.
    drop(serve(&dir, &[]).expect("a clean start after recovery"));
    let _ = std::fs::remove_dir_all(&dir);
}
