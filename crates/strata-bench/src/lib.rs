//! Strata's scenario benchmarks. Each scenario is a library function returning a report whose `Display` is the
//! one `key=value` line recorded in `BENCHMARKS.md`; the `strata-bench` binary (and later `strata bench`) calls
//! them. Baselines are measured in the same run, never quoted.

#![allow(missing_docs)]

pub mod api;
pub mod behind_crash;
pub mod cdc;
pub mod cluster;
pub mod consistency;
pub mod invalidation;
pub mod l1;
pub mod l2;
pub mod loadgen;
pub mod proxy;
pub mod purge;
pub mod ratelimit;
pub mod slow_dependency;
pub mod stampede;
pub mod writes;
pub mod xfetch;
