//! Reads the scylla driver's errors by their types, never by their wording: the kind a
//! failure gets decides retry, requeue and health, and the driver's messages change between
//! releases (1.9 already says "Connection broken" where older ones said "Broken connection").
//!
//! One `DriverError` impl per error type the store's calls return; each walks its variants
//! down to the few facts that matter (refused login, TLS, timeout, no connection).

use scylla::errors::{
    BrokenConnectionError, BrokenConnectionErrorKind, ConnectionError, ConnectionPoolError,
    ConnectionSetupRequestErrorKind, DbError, ExecutionError, FrameHeaderParseError, MetadataError,
    MetadataFetchErrorKind, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError, RequestError, SchemaAgreementError, UseKeyspaceError,
};

/// What a driver error means for the store. `Disconnected` and `Other` keep the driver's
/// whole message; `Auth` and `Tls` carry just the part a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Cassandra refused the credentials (or wanted some): the server's words.
    Auth(String),
    /// The TLS layer failed (certificate, name, alert, or not TLS at all): rustls's words.
    Tls(String),
    /// The client's request timeout ran out, or Cassandra's own read/write timeout.
    Timeout,
    /// No usable connection: refused, reset, pool empty or still filling.
    Disconnected,
    /// Anything else Cassandra or the driver reported.
    Other,
}

/// A driver error type the store knows how to classify.
pub(crate) trait DriverError: std::fmt::Display {
    fn cause(&self) -> Cause;
}

impl<T: DriverError + ?Sized> DriverError for &T {
    fn cause(&self) -> Cause {
        (**self).cause()
    }
}

impl DriverError for ExecutionError {
    fn cause(&self) -> Cause {
        match self {
            ExecutionError::RequestTimeout(_) => Cause::Timeout,
            ExecutionError::LastAttemptError(e) => e.cause(),
            ExecutionError::ConnectionPoolError(e) => e.cause(),
            ExecutionError::PrepareError(e) => e.cause(),
            ExecutionError::UseKeyspaceError(e) => e.cause(),
            ExecutionError::SchemaAgreementError(e) => e.cause(),
            ExecutionError::MetadataError(e) => e.cause(),
            // The default policy plans over every known node; an empty plan means none is up.
            ExecutionError::EmptyPlan => Cause::Disconnected,
            _ => Cause::Other,
        }
    }
}

impl DriverError for RequestError {
    fn cause(&self) -> Cause {
        match self {
            RequestError::RequestTimeout(_) => Cause::Timeout,
            RequestError::LastAttemptError(e) => e.cause(),
            RequestError::ConnectionPoolError(e) => e.cause(),
            RequestError::EmptyPlan => Cause::Disconnected,
            _ => Cause::Other,
        }
    }
}

impl DriverError for RequestAttemptError {
    fn cause(&self) -> Cause {
        match self {
            RequestAttemptError::DbError(db, message) => db_cause(db, message),
            RequestAttemptError::BrokenConnectionError(e) => e.cause(),
            _ => Cause::Other,
        }
    }
}

/// Cassandra's own error codes. Unavailable, Overloaded and IsBootstrapping stay `Other`
/// (db_error, retried as transient): the session is up, a replica or coordinator is not.
fn db_cause(db: &DbError, message: &str) -> Cause {
    match db {
        DbError::AuthenticationError => Cause::Auth(message.to_string()),
        DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => Cause::Timeout,
        _ => Cause::Other,
    }
}

/// What a write that failed should do next. Decided by the driver error's type: the session
/// is up and Cassandra answered, but either could not take the write now (`Wait`) or refused
/// something the request carries (`Refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteVerdict {
    /// A coordinator-side transient: too few replicas alive (`Unavailable`), an overloaded
    /// or bootstrapping coordinator, Cassandra's read/write timeout or the client's request
    /// timeout. The write waits and is tried again; the text says why, for health.
    Wait(String),
    /// Cassandra refused the request for its content (`Invalid`: e.g. a TTL out of range, a
    /// mutation too large; `ProtocolError`: e.g. a request frame over its limit). One row
    /// may carry the cause: splitting the batch isolates it. The word names the counter.
    Refused(&'static str),
    /// Anything else (no connection, credentials, ...): see `StoreError::from_driver`.
    Other,
}

/// The `WriteVerdict` of an error a write request returned.
pub(crate) fn write_verdict(err: &ExecutionError) -> WriteVerdict {
    match err {
        ExecutionError::RequestTimeout(d) => {
            WriteVerdict::Wait(format!("no answer within the request timeout ({d:?})"))
        }
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => db_verdict(db),
        _ => WriteVerdict::Other,
    }
}

fn db_verdict(db: &DbError) -> WriteVerdict {
    // LocalQuorum -> LOCAL_QUORUM, as cqlsh and the config write it.
    let level = |c: &scylla::statement::Consistency| {
        let mut out = String::new();
        for (i, ch) in format!("{c:?}").chars().enumerate() {
            if i > 0 && ch.is_ascii_uppercase() {
                out.push('_');
            }
            out.push(ch.to_ascii_uppercase());
        }
        out
    };
    match db {
        DbError::Unavailable {
            consistency,
            required,
            alive,
        } => WriteVerdict::Wait(format!(
            "Unavailable: {alive} replica{} alive, {} needs {required}",
            if *alive == 1 { "" } else { "s" },
            level(consistency)
        )),
        DbError::Overloaded => {
            WriteVerdict::Wait("Overloaded: the coordinator is overloaded".into())
        }
        DbError::IsBootstrapping => {
            WriteVerdict::Wait("the coordinator is still bootstrapping".into())
        }
        DbError::RateLimitReached { .. } => {
            WriteVerdict::Wait("the coordinator's rate limit was reached".into())
        }
        DbError::WriteTimeout {
            consistency,
            received,
            required,
            ..
        } => WriteVerdict::Wait(format!(
            "write timeout: {received} of {required} replicas answered ({})",
            level(consistency)
        )),
        DbError::ReadTimeout {
            consistency,
            received,
            required,
            ..
        } => WriteVerdict::Wait(format!(
            "read timeout: {received} of {required} replicas answered ({})",
            level(consistency)
        )),
        DbError::Invalid => WriteVerdict::Refused("invalid"),
        DbError::ProtocolError => WriteVerdict::Refused("protocol"),
        _ => WriteVerdict::Other,
    }
}

impl DriverError for PrepareError {
    fn cause(&self) -> Cause {
        match self {
            PrepareError::ConnectionPoolError(e) => e.cause(),
            PrepareError::AllAttemptsFailed { first_attempt } => first_attempt.cause(),
            _ => Cause::Other,
        }
    }
}

impl DriverError for ConnectionPoolError {
    /// A pool without connections is "not connected", unless its last connection failed for
    /// a reason the user must fix (credentials, TLS).
    fn cause(&self) -> Cause {
        match self {
            ConnectionPoolError::Broken {
                last_connection_error,
            } => last_connection_error.cause(),
            _ => Cause::Disconnected,
        }
    }
}

impl DriverError for ConnectionError {
    /// Opening a connection failed; a connect timeout is a node that does not answer, so
    /// "not connected", as a refused connection is.
    fn cause(&self) -> Cause {
        match self {
            ConnectionError::IoError(io) => tls_cause(io).unwrap_or(Cause::Disconnected),
            ConnectionError::BrokenConnection(e) => e.cause(),
            ConnectionError::ConnectionSetupRequestError(setup) => match setup.get_error() {
                ConnectionSetupRequestErrorKind::DbError(db, message) => {
                    match db_cause(db, message) {
                        auth @ Cause::Auth(_) => auth,
                        _ => Cause::Disconnected,
                    }
                }
                ConnectionSetupRequestErrorKind::MissingAuthentication => {
                    Cause::Auth(setup.get_error().to_string())
                }
                ConnectionSetupRequestErrorKind::StartAuthSessionError(why)
                | ConnectionSetupRequestErrorKind::AuthChallengeEvaluationError(why)
                | ConnectionSetupRequestErrorKind::AuthFinishError(why) => Cause::Auth(why.clone()),
                ConnectionSetupRequestErrorKind::BrokenConnection(e) => e.cause(),
                _ => Cause::Disconnected,
            },
            _ => Cause::Disconnected,
        }
    }
}

impl DriverError for BrokenConnectionError {
    /// A connection that broke is "not connected", unless the break was a TLS alert (the
    /// server refusing our certificate arrives as the first read failing).
    fn cause(&self) -> Cause {
        let io = match self.downcast_ref::<BrokenConnectionErrorKind>() {
            Some(BrokenConnectionErrorKind::FrameHeaderParseError(
                FrameHeaderParseError::HeaderIoError(io),
            )) => Some(io),
            Some(BrokenConnectionErrorKind::WriteError(io)) => Some(io),
            _ => None,
        };
        io.and_then(tls_cause).unwrap_or(Cause::Disconnected)
    }
}

/// The driver hands TLS failures over as I/O errors wrapping the rustls error (tokio-rustls
/// and scylla's `TlsError` both do); the rustls error's own text is what a user can act on.
fn tls_cause(io: &std::io::Error) -> Option<Cause> {
    let inner = io.get_ref()?;
    if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
        return Some(Cause::Tls(tls.to_string()));
    }
    if let Some(name) = inner.downcast_ref::<rustls::pki_types::InvalidDnsNameError>() {
        return Some(Cause::Tls(name.to_string()));
    }
    None
}

impl DriverError for UseKeyspaceError {
    fn cause(&self) -> Cause {
        match self {
            UseKeyspaceError::RequestTimeout(_) => Cause::Timeout,
            UseKeyspaceError::RequestError(e) => e.cause(),
            _ => Cause::Other,
        }
    }
}

impl DriverError for SchemaAgreementError {
    fn cause(&self) -> Cause {
        match self {
            SchemaAgreementError::Timeout(_) => Cause::Timeout,
            SchemaAgreementError::ConnectionPoolError(e) => e.cause(),
            SchemaAgreementError::PrepareError(e) => e.cause(),
            SchemaAgreementError::RequestError(e) => e.cause(),
            _ => Cause::Other,
        }
    }
}

impl DriverError for MetadataError {
    fn cause(&self) -> Cause {
        match self {
            MetadataError::ConnectionPoolError(e) => e.cause(),
            MetadataError::FetchError(fetch) => match &fetch.error {
                MetadataFetchErrorKind::PrepareError(e) => e.cause(),
                MetadataFetchErrorKind::NextRowError(e) => e.cause(),
                _ => Cause::Other,
            },
            _ => Cause::Other,
        }
    }
}

impl DriverError for NewSessionError {
    /// Session building: an unresolvable host list stays `Other`; `connect_once` reports
    /// that (like a timeout) as no contact point answering.
    fn cause(&self) -> Cause {
        match self {
            NewSessionError::MetadataError(e) => e.cause(),
            NewSessionError::UseKeyspaceError(e) => e.cause(),
            _ => Cause::Other,
        }
    }
}

impl DriverError for PagerExecutionError {
    fn cause(&self) -> Cause {
        match self {
            PagerExecutionError::PrepareError(e) => e.cause(),
            PagerExecutionError::NextPageError(e) => e.cause(),
            PagerExecutionError::UseKeyspaceError(e) => e.cause(),
            PagerExecutionError::SchemaAgreementError(e) => e.cause(),
            PagerExecutionError::MetadataError(e) => e.cause(),
            _ => Cause::Other,
        }
    }
}

impl DriverError for NextPageError {
    fn cause(&self) -> Cause {
        match self {
            NextPageError::RequestFailure(e) => e.cause(),
            _ => Cause::Other,
        }
    }
}

impl DriverError for NextRowError {
    fn cause(&self) -> Cause {
        match self {
            NextRowError::NextPageError(e) => e.cause(),
            _ => Cause::Other,
        }
    }
}

/// Each kind from a driver error built by hand, with wording that would have misled the old
/// text search where the error carries a message: only the types may decide.
#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;
    use std::time::Duration;

    use scylla::errors::WriteType;
    use scylla::statement::Consistency;

    use super::*;
    use crate::error::StoreError;

    const TIMEOUT: Duration = Duration::from_millis(1234);
    /// Words the old classification searched for; here they must change nothing.
    const MISLEADING: &str = "Authentication TLS tls certificate Timeout timed out \
                              Connection refused pool is broken initialized";

    fn classify(err: impl DriverError) -> StoreError {
        StoreError::from_driver(err, TIMEOUT)
    }

    fn server(db: DbError, message: &str) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, message.into()))
    }

    /// The error a session build returns when its control connection could not open.
    fn session_failed(last: ConnectionError) -> NewSessionError {
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
            ConnectionPoolError::Broken {
                last_connection_error: last,
            },
        ))
    }

    fn io_error(
        kind: io::ErrorKind,
        inner: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> io::Error {
        io::Error::new(kind, inner)
    }

    fn header_read_failed(io: io::Error) -> BrokenConnectionError {
        BrokenConnectionErrorKind::FrameHeaderParseError(FrameHeaderParseError::HeaderIoError(io))
            .into()
    }

    #[test]
    fn client_and_server_timeouts_are_timeout() {
        let read_timeout = DbError::ReadTimeout {
            consistency: Consistency::One,
            received: 0,
            required: 1,
            data_present: false,
        };
        let write_timeout = DbError::WriteTimeout {
            consistency: Consistency::Quorum,
            received: 1,
            required: 2,
            write_type: WriteType::Simple,
        };
        let errors = [
            classify(ExecutionError::RequestTimeout(Duration::from_secs(9))),
            classify(server(read_timeout, "")),
            classify(server(write_timeout, "")),
            classify(SchemaAgreementError::Timeout(Duration::from_secs(9))),
            classify(NextRowError::NextPageError(NextPageError::RequestFailure(
                RequestError::RequestTimeout(Duration::from_secs(9)),
            ))),
            classify(UseKeyspaceError::RequestTimeout(Duration::from_secs(9))),
        ];
        for e in errors {
            assert_eq!(e, StoreError::Timeout(TIMEOUT));
            assert!(e.is_transient());
        }
    }

    #[test]
    fn a_refused_login_is_auth_failed_with_the_servers_words() {
        let words = "Provided username root and/or password are incorrect";
        let e = classify(server(DbError::AuthenticationError, words));
        assert_eq!(e, StoreError::AuthFailed(words.into()));
        assert_eq!(e.kind(), "auth_failed");
        assert!(!e.is_transient());
        // The same refusal during connection setup cannot be built outside the driver
        // (`ConnectionSetupRequestError` is non-exhaustive); tests/live.rs
        // `wrong_password_is_an_authentication_error` covers that path.
    }

    #[test]
    fn no_usable_connection_is_not_connected() {
        let refused = session_failed(ConnectionError::IoError(Arc::new(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        ))));
        let reset = session_failed(ConnectionError::BrokenConnection(header_read_failed(
            io::Error::from(io::ErrorKind::ConnectionReset),
        )));
        let errors = [
            classify(&refused),
            classify(&reset),
            classify(session_failed(ConnectionError::ConnectTimeout)),
            classify(ExecutionError::ConnectionPoolError(
                ConnectionPoolError::Initializing,
            )),
            classify(ExecutionError::EmptyPlan),
            classify(ExecutionError::LastAttemptError(
                RequestAttemptError::BrokenConnectionError(
                    BrokenConnectionErrorKind::ChannelError.into(),
                ),
            )),
            classify(PrepareError::ConnectionPoolError(
                ConnectionPoolError::NodeDisabledByHostFilter,
            )),
            classify(RequestError::EmptyPlan),
        ];
        for e in errors {
            assert_eq!(e.kind(), "not_connected", "{e:?}");
            assert!(e.is_transient());
        }
        // The reason keeps the driver's whole message.
        assert_eq!(
            classify(&refused),
            StoreError::NotConnected {
                reason: refused.to_string()
            }
        );
    }

    #[test]
    fn tls_failures_are_tls_failed_with_rustls_words() {
        let unknown_ca = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let e = classify(session_failed(ConnectionError::IoError(Arc::new(
            io_error(io::ErrorKind::InvalidData, unknown_ca),
        ))));
        assert_eq!(
            e,
            StoreError::TlsFailed("invalid peer certificate: UnknownIssuer".into())
        );
        assert!(!e.is_transient());

        // The server refusing our (missing) client certificate arrives as the first read
        // of the connection failing with an alert.
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let e = classify(session_failed(ConnectionError::BrokenConnection(
            header_read_failed(io_error(io::ErrorKind::InvalidData, alert)),
        )));
        assert_eq!(e.kind(), "tls_failed", "{e:?}");

        // A TLS client on a plain-text port.
        let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let e = classify(session_failed(ConnectionError::IoError(Arc::new(
            io_error(io::ErrorKind::InvalidData, plain),
        ))));
        assert_eq!(e.kind(), "tls_failed", "{e:?}");

        // An I/O error whose text talks about TLS is still only I/O.
        let e = classify(session_failed(ConnectionError::IoError(Arc::new(
            io_error(io::ErrorKind::UnexpectedEof, MISLEADING),
        ))));
        assert_eq!(e.kind(), "not_connected", "{e:?}");
    }

    #[test]
    fn other_server_errors_are_db_error_whatever_their_words() {
        let errors = [
            server(DbError::SyntaxError, MISLEADING),
            server(DbError::Invalid, MISLEADING),
            server(DbError::Unauthorized, MISLEADING),
            server(DbError::Overloaded, MISLEADING),
            server(DbError::IsBootstrapping, MISLEADING),
            server(
                DbError::Unavailable {
                    consistency: Consistency::Quorum,
                    required: 2,
                    alive: 1,
                },
                MISLEADING,
            ),
        ];
        for err in errors {
            let e = classify(&err);
            assert_eq!(e, StoreError::Db(err.to_string()));
            assert_eq!(e.kind(), "db_error");
            assert!(e.is_transient());
            assert!(!e.is_tombstone_overflow());
        }
        let prepare = PrepareError::AllAttemptsFailed {
            first_attempt: RequestAttemptError::DbError(DbError::Invalid, MISLEADING.into()),
        };
        assert_eq!(classify(prepare).kind(), "db_error");
        let pager = PagerExecutionError::NextPageError(NextPageError::RequestFailure(
            RequestError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId),
        ));
        assert_eq!(classify(pager).kind(), "db_error");
    }

    #[test]
    fn coordinator_transients_wait_and_content_refusals_split() {
        let unavailable = server(
            DbError::Unavailable {
                consistency: Consistency::Quorum,
                required: 2,
                alive: 1,
            },
            MISLEADING,
        );
        assert_eq!(
            write_verdict(&unavailable),
            WriteVerdict::Wait("Unavailable: 1 replica alive, QUORUM needs 2".into())
        );
        let write_timeout = server(
            DbError::WriteTimeout {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                write_type: WriteType::UnloggedBatch,
            },
            "",
        );
        assert_eq!(
            write_verdict(&write_timeout),
            WriteVerdict::Wait("write timeout: 1 of 2 replicas answered (LOCAL_QUORUM)".into())
        );
        for waits in [
            server(DbError::Overloaded, MISLEADING),
            server(DbError::IsBootstrapping, MISLEADING),
            ExecutionError::RequestTimeout(Duration::from_secs(5)),
        ] {
            assert!(
                matches!(write_verdict(&waits), WriteVerdict::Wait(_)),
                "{waits}"
            );
        }
        assert_eq!(
            write_verdict(&server(DbError::Invalid, "ttl is too large")),
            WriteVerdict::Refused("invalid")
        );
        assert_eq!(
            write_verdict(&server(DbError::ProtocolError, "Request is too big")),
            WriteVerdict::Refused("protocol")
        );
        for other in [
            server(DbError::SyntaxError, MISLEADING),
            server(DbError::Unauthorized, MISLEADING),
            server(DbError::AuthenticationError, MISLEADING),
            ExecutionError::EmptyPlan,
            ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(
                BrokenConnectionErrorKind::ChannelError.into(),
            )),
        ] {
            assert_eq!(write_verdict(&other), WriteVerdict::Other, "{other}");
        }
    }

    #[test]
    fn a_read_failed_on_tombstones_is_a_db_error_that_says_so() {
        let failure = DbError::ReadFailure {
            consistency: Consistency::One,
            received: 0,
            required: 1,
            numfailures: 1,
            data_present: false,
        };
        let e = classify(server(
            failure.clone(),
            "Operation failed - received 0 responses and 1 failures: \
             READ_TOO_MANY_TOMBSTONES from /127.0.0.1:7000",
        ));
        assert_eq!(e.kind(), "db_error");
        assert!(e.is_tombstone_overflow());
        let e = classify(server(failure, "Operation failed - received 0 responses"));
        assert!(!e.is_tombstone_overflow());
    }
}
