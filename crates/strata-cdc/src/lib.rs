//! `strata-cdc`: changes made to the source of truth — by Strata or by anyone else — become invalidations on
//! every node (DESIGN §6).
//!
//! - [`pg`]: a PostgreSQL logical-replication consumer (`pgoutput`) that maps row changes to keys, tags and
//!   versions, applies them to L2 and the bus, and acknowledges the slot's LSN only afterwards (at least once,
//!   deduplicated by LSN, resumed from the confirmed LSN; a lost slot clears every mapped namespace). Several
//!   nodes may run one on the same slot: one holds it (an advisory lock), the others wait as standbys and take
//!   over as soon as its session ends.
//! - [`outbox`]: the same for SQLite, which has no replication stream: an outbox table written in the writer's
//!   transaction, relayed after commit and deleted once applied.
//! - [`mapping`]: the rules from table to namespace, key template, tag templates and version column, which never
//!   map a change to less than it invalidates.
//! - [`apply`]: the shared last step of both — L2 tombstones and barriers first, then the bus, all confirmed.
//! - [`pgoutput`]: the decoder of the replication messages, total over arbitrary bytes.

pub mod apply;
pub mod mapping;
pub mod outbox;
pub mod pg;
pub mod pgoutput;

pub use apply::{Applied, Applier, ApplyOptions, Observer};
pub use mapping::{Batch, ConfigError, Mapping, Rule, Template};
pub use outbox::{Outbox, OutboxRelay, OutboxStats, RelayHandle, RelayOptions};
pub use pg::{CdcError, CdcHandle, CdcStats, Holder, PgCdc, PgCdcOptions};
