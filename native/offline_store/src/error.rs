//! One error type for every operation of the store. Each variant is a failure a caller can
//! act on; `kind()` gives the stable snake_case word the NIF turns into an Erlang atom.

mod driver;

use std::time::Duration;

use driver::Cause;
pub(crate) use driver::{DriverError, WriteVerdict, write_verdict};

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A configuration value is wrong; `field` is the key to fix.
    #[error("invalid config field `{field}`: {reason}")]
    InvalidConfig { field: String, reason: String },

    /// No session yet (still connecting, or every node is down). `reason` is the last
    /// connection error, if any.
    #[error("not connected to Cassandra: {reason}")]
    NotConnected { reason: String },

    /// Cassandra refused the credentials.
    #[error("authentication failed: {0} (check username and password)")]
    AuthFailed(String),

    /// The TLS handshake with Cassandra failed (certificate, name, or a plain-text port).
    #[error("TLS to Cassandra failed: {0}")]
    TlsFailed(String),

    /// The configured keyspace does not exist.
    #[error(
        "keyspace `{0}` does not exist; create it, e.g. CREATE KEYSPACE {0} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': '1'}}"
    )]
    KeyspaceMissing(String),

    /// The keyspace has no `mqtt_msg` table (and creating it was not enabled).
    #[error(
        "table `{0}.mqtt_msg` does not exist; create it (see README) or set create_table_if_missing"
    )]
    TableMissing(String),

    /// The topic index table could not be created or used.
    #[error(
        "topic index table mqtt_msg_topic_index unavailable: {0} (needed for wildcard replay; create it as a superuser (README, Prepare Cassandra), grant CREATE on the keyspace, or set topic_index = false)"
    )]
    IndexUnavailable(String),

    /// The replay floor table could not be created or used.
    #[error(
        "replay floor table mqtt_msg_floor unavailable: {0} (create it as a superuser (README, Prepare Cassandra), grant CREATE on the keyspace, or set replay_floor = false)"
    )]
    FloorUnavailable(String),

    /// `mqtt_msg` exists but differs from the table this plugin works with.
    #[error("table mqtt_msg does not match the expected schema: {0}")]
    SchemaMismatch(String),

    /// Cassandra (or the client) did not answer in time.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),

    /// The write buffer is full and the overflow policy refused the write.
    #[error("write buffer full ({capacity} writes); write dropped")]
    Overloaded { capacity: usize },

    /// The write buffer holds `buffer_max_bytes` and the overflow policy refused the write.
    #[error("write buffer full ({max_bytes} bytes); write dropped")]
    OverloadedBytes { max_bytes: usize },

    /// The payload is larger than `max_payload_bytes`.
    #[error("payload of {size} bytes is larger than max_payload_bytes ({max})")]
    PayloadTooLarge { size: usize, max: usize },

    /// A message id is not 32 hexadecimal characters.
    #[error("invalid msgid {0:?}: expected 32 hexadecimal characters (an EMQX GUID)")]
    InvalidMsgId(String),

    /// A NIF call got an argument it cannot use (wrong term type, a topic or msgid that is
    /// not valid). The caller's input is wrong, not the configuration.
    #[error("invalid input: {0} (fix the arguments of the call)")]
    InvalidInput(String),

    /// The Tokio runtime that runs the store could not be started (threads or memory
    /// exhausted); nothing reached Cassandra.
    #[error("async runtime failed to start: {0} (check the process's thread and memory limits)")]
    RuntimeFailed(String),

    /// A stored row cannot be turned back into a message (e.g. broken payload encoding).
    #[error("stored row is invalid: {0}")]
    InvalidRow(String),

    /// Any other error Cassandra or the driver reported.
    #[error("Cassandra error: {0}")]
    Db(String),

    /// The store was stopped; the request was not carried out.
    #[error("store is shut down")]
    Shutdown,
}

impl StoreError {
    /// A stable word for the kind of error, e.g. `auth_failed`, for logs and Erlang atoms.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::InvalidConfig { .. } => "invalid_config",
            StoreError::NotConnected { .. } => "not_connected",
            StoreError::AuthFailed(_) => "auth_failed",
            StoreError::TlsFailed(_) => "tls_failed",
            StoreError::KeyspaceMissing(_) => "keyspace_missing",
            StoreError::TableMissing(_) => "table_missing",
            StoreError::SchemaMismatch(_) => "schema_mismatch",
            StoreError::IndexUnavailable(_) => "index_unavailable",
            StoreError::FloorUnavailable(_) => "floor_unavailable",
            StoreError::Timeout(_) => "timeout",
            StoreError::Overloaded { .. } | StoreError::OverloadedBytes { .. } => "overloaded",
            StoreError::PayloadTooLarge { .. } => "payload_too_large",
            StoreError::InvalidMsgId(_) => "invalid_msgid",
            StoreError::InvalidInput(_) => "invalid_input",
            StoreError::RuntimeFailed(_) => "runtime_failed",
            StoreError::InvalidRow(_) => "invalid_row",
            StoreError::Db(_) => "db_error",
            StoreError::Shutdown => "shutdown",
        }
    }

    /// True for failures that retrying the same request later may fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::NotConnected { .. } | StoreError::Timeout(_) | StoreError::Db(_)
        )
    }

    /// True when Cassandra aborted a read because it met more tombstones than its
    /// `tombstone_failure_threshold`: the same read over a narrower msgid range can succeed.
    ///
    /// Text matching on purpose: the driver speaks CQL protocol v4, whose READ_FAILURE
    /// carries only counts (`DbError::ReadFailure`); the reason code exists only in the
    /// server's message ("... 1 failures: READ_TOO_MANY_TOMBSTONES from /10.0.0.1:7000"). The
    /// words matched are Cassandra's enum names (`RequestFailureReason`,
    /// `TombstoneOverwhelmingException`), not prose.
    pub fn is_tombstone_overflow(&self) -> bool {
        matches!(self, StoreError::Db(text)
            if text.contains("READ_TOO_MANY_TOMBSTONES") || text.contains("TombstoneOverwhelming"))
    }

    /// Classifies an error of the scylla driver by its type (see `driver`): `timeout` is the
    /// request timeout the failed call ran with, for the `Timeout` message.
    pub(crate) fn from_driver(err: impl DriverError, timeout: Duration) -> Self {
        match err.cause() {
            Cause::Auth(detail) => StoreError::AuthFailed(detail),
            Cause::Tls(detail) => StoreError::TlsFailed(detail),
            Cause::Timeout => StoreError::Timeout(timeout),
            Cause::Disconnected => StoreError::NotConnected {
                reason: err.to_string(),
            },
            Cause::Other => StoreError::Db(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_snake_case_words() {
        let errors = [
            StoreError::NotConnected { reason: "x".into() },
            StoreError::AuthFailed("x".into()),
            StoreError::Overloaded { capacity: 1 },
            StoreError::OverloadedBytes { max_bytes: 1 },
            StoreError::Timeout(Duration::from_secs(1)),
        ];
        for e in errors {
            assert!(e.kind().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }

    #[test]
    fn messages_suggest_the_fix() {
        let e = StoreError::KeyspaceMissing("mqtt".into());
        assert!(e.to_string().contains("CREATE KEYSPACE mqtt"), "{e}");
        let e = StoreError::InvalidConfig {
            field: "servers".into(),
            reason: "bad".into(),
        };
        assert_eq!(e.to_string(), "invalid config field `servers`: bad");
    }
}
