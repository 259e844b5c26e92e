//! `strata bench <scenario>`: the scenario benchmarks. Engine scenarios (`stampede`, `xfetch`, `l1`, `l2`,
//! `invalidation`, `hotkey`, `write-behind-crash`, `writes`, `cdc`) run in the `strata-bench` binary — it counts
//! allocations with its own global allocator and re-executes itself for crash tests, which a server binary must
//! not do — found next to this executable or on `PATH`. `api` is the server's own scenario (see
//! [`crate::bench_api`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

/// A scenario.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// L1 hits through the data API (server and load generator on separate cores) and the server's memory with
    /// its L1 budget full.
    Api {
        /// Seconds of load.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// The L1 budget, MiB.
        #[arg(long, default_value_t = 256)]
        budget_mib: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
    },
    /// Any `strata-bench` scenario, e.g. `stampede`, `writes`, `cdc --nodes 4` (see `strata-bench --help`).
    #[command(external_subcommand)]
    Engine(Vec<String>),
}

fn strata_bench() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name(format!("strata-bench{}", std::env::consts::EXE_SUFFIX));
    if sibling.exists() {
        return Ok(sibling);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("strata-bench"))
        .find(|p| p.exists())
        .context("the strata-bench binary was not found next to strata or on PATH; build it with `cargo build --release -p strata-bench`")
}

/// Runs a scenario; exits with the scenario's status.
pub fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Api {
            seconds,
            connections,
            budget_mib,
            value_bytes,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(crate::bench_api::run(
                seconds,
                connections,
                budget_mib,
                value_bytes,
            ))?;
            println!("{report}");
            Ok(())
        }
        Scenario::Engine(args) => {
            let bin = strata_bench()?;
            let status = std::process::Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}
