//! The rows of a driver answer, with its failures classified for the store: shared by every
//! module that sends a request.

use std::time::Duration;

use scylla::errors::ExecutionError;
use scylla::response::query_result::{QueryResult, QueryRowsResult};

use crate::error::StoreError;

/// A driver error with no class of its own (decoding an answer, a missing row).
pub(crate) fn db_err(e: impl std::error::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The rows of an unpaged request (`execute_unpaged` or `query_unpaged`), both its failure and
/// a response without rows classified for the store; `timeout` is the request timeout it ran
/// with.
pub(crate) async fn unpaged_rows(
    request: impl std::future::Future<Output = Result<QueryResult, ExecutionError>>,
    timeout: Duration,
) -> Result<QueryRowsResult, StoreError> {
    request
        .await
        .map_err(|e| StoreError::from_driver(e, timeout))?
        .into_rows_result()
        .map_err(db_err)
}
