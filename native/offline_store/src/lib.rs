//! Storage core of `emqx_offline_cassandra`: keeps offline MQTT messages in Cassandra's
//! fixed `mqtt.mqtt_msg` table, fetches them oldest first, and deletes them on ack.
//!
//! Plain async Rust on Tokio and the scylla driver, no Erlang: the NIF crate wraps it and
//! `cargo test` exercises it against a real Cassandra (see `tests/`).
//!
//! * [`Store::start`] connects in the background with retry; [`Store::state`] shows how.
//! * [`Store::submit_store`] / [`Store::submit_delete`] return at once; a bounded buffer
//!   feeds single-partition unlogged batches, many in flight ([`StatsSnapshot`] counts
//!   every outcome).
//! * Deletes carry a write timestamp after their insert's, so an ack that overtakes its
//!   insert still wins.
//! * [`Store::fetch`] reads page by page, newest `limit` rows returned oldest first.
//! * Payloads are arbitrary bytes, stored losslessly in the `text` column ([`payload`]).

mod admin;
#[cfg(feature = "bench_api")]
mod bench_api;
#[cfg(feature = "bench_api")]
mod bench_index;
mod claims;
mod clock;
pub mod config;
mod connection;
pub mod consistency;
pub mod error;
mod expiry;
mod floor;
pub mod index_keys;
mod index_reads;
mod index_writes;
mod lru;
pub mod msgid;
pub mod payload;
mod reads;
mod replay_limit;
mod replay_reads;
mod requests;
mod retries;
mod rows;
pub mod schema;
mod sending;
mod shared;
mod spilling;
mod spool;
mod statements;
mod stats;
mod store;
mod supervisor;
mod table_checks;
pub mod tls;
pub mod topic;
mod types;
mod waiting;
mod write;
mod write_pipeline;

pub use claims::Claim;
pub use config::{BufferMode, OverflowPolicy, StoreConfig};
pub use error::StoreError;
pub use msgid::MsgId;
pub use replay_reads::{PageRequest, ReplayPlan};
pub use stats::StatsSnapshot;
pub use store::Store;
pub use tls::TlsConfig;
pub use types::{
    ConnState, Degraded, EventSink, FetchOptions, Message, ShutdownReport, StoreEvent,
    StoredMessage,
};
pub use write_pipeline::Handover;
