//! `strata bench <scenario>`: the scenario benchmarks. Engine scenarios (`stampede`, `xfetch`, `l1`, `l2`,
//! `invalidation`, `hotkey`, `write-behind-crash`, `writes`, `cdc`) run in the `strata-bench` binary — it counts
//! allocations with its own global allocator and re-executes itself for crash tests, which a server binary must
//! not do — found next to this executable or on `PATH`. `api` is the server's own scenario.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

/// A scenario.
#[derive(Debug, Subcommand)]
pub enum Scenario {
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
