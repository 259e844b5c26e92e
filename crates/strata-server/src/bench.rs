//! `strata bench <scenario>`: a thin launcher of the `strata-bench` binary (found next to this executable or on
//! `PATH`), which runs every scenario (`api`, `stampede`, `xfetch`, `l1`, `l2`, `invalidation`, `hotkey`,
//! `write-behind-crash`, `writes`, `cdc`, `consistency`, `proxy`, `proxy-stampede`, `purge`, `ratelimit`,
//! `slow-dependency`): it counts allocations with its own global allocator and
//! re-executes itself for crash tests, which a server binary must not do, and the server's production build
//! carries no benchmark or test code.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

/// A scenario: every one runs in the `strata-bench` binary, e.g. `api`, `stampede`, `writes`, `cdc --nodes 4`,
/// `consistency --faults` (see `strata-bench --help`).
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Any `strata-bench` scenario with its arguments.
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
    let Scenario::Engine(args) = scenario;
    let bin = strata_bench()?;
    let status = std::process::Command::new(&bin)
        .args(&args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}
