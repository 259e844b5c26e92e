//! Dead letters end to end through the `strata` binary on the embedded default: a write-behind write the table
//! keeps refusing (a trigger stands in for a constraint only the database can check) is acknowledged, parked
//! after its attempts, dropped from the caches, listed, discarded or retried over HTTP and with
//! `strata dead-letters`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{call, data_dir, serve};
use serde_json::Value;
use sqlx::sqlite::SqlitePoolOptions;

fn letters(base: &str) -> Vec<Value> {
    let (status, body) = call("GET", &format!("{base}/v1/_dead_letters"), "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["dead_letters"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_table_keeps_refusing_is_parked_dropped_from_the_caches_and_manageable() {
    let dir = data_dir("dead-letters");
    let server = serve(&dir, &[]).expect("start");
    let base = server.base.clone();
    let db = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", dir.join("catalog.db").display()))
        .await
        .unwrap();
    for sql in [
        "CREATE TRIGGER frozen_i BEFORE INSERT ON counter BEGIN SELECT RAISE(ABORT, 'counters are frozen'); END",
        "CREATE TRIGGER frozen_u BEFORE UPDATE ON counter BEGIN SELECT RAISE(ABORT, 'counters are frozen'); END",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    for key in ["keep", "drop"] {
        let (status, body) = call("PUT", &format!("{base}/v1/counter/{key}"), r#"{"n": 5}"#);
        assert_eq!(status, 200, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while letters(&base).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the refused writes were never parked"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = letters(&base);
    assert!(
        all[0]["error"].as_str().unwrap().contains("frozen"),
        "{all:?}"
    );
    // Never persisted, so never served again.
    let (status, body) = call("GET", &format!("{base}/v1/counter/keep"), "");
    assert_eq!(status, 404, "the parked value is still served: {body}");

    // Discard one with the CLI; retry the other once the table accepts it.
    let seq_of = |key: &str| {
        all.iter().find(|d| d["key"] == key).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["dead-letters", "--server", &base])
            .args(args)
            .env_remove("STRATA_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(cli(&["list"]).contains("\"drop\""));
    cli(&["discard", &seq_of("drop").to_string()]);
    let (status, _) = call(
        "DELETE",
        &format!("{base}/v1/_dead_letters/{}", seq_of("drop")),
        "",
    );
    assert_eq!(status, 404, "discarded twice");
    sqlx::query("DROP TRIGGER frozen_i")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER frozen_u")
        .execute(&db)
        .await
        .unwrap();
    let (status, body) = call(
        "POST",
        &format!("{base}/v1/_dead_letters/{}/retry", seq_of("keep")),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(letters(&base).is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: Option<i64> = sqlx::query_scalar("SELECT n FROM counter WHERE id = 'keep'")
            .fetch_optional(&db)
            .await
            .unwrap_or(None);
        if n == Some(5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retried write never reached the table"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = call("POST", &format!("{base}/v1/_dead_letters/x/retry"), "");
    assert_eq!(status, 400);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
