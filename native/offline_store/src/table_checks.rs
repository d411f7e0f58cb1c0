//! What the live cluster holds, checked at connect: the keyspace, the fixed `mqtt_msg` table
//! as `schema` says it must be (created when the operator allows that), and the product's
//! side tables (created when missing and the role may; see `ensure_side_table`).

use std::time::Duration;

use scylla::client::session::Session;

use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::rows::{db_err, unpaged_rows};
use crate::schema::{self, ColumnInfo};

/// The keyspace must exist; `mqtt_msg` must have the fixed structure (created first when
/// missing and `create_table_if_missing` allows it); the side tables the configuration uses
/// must exist or be created.
pub(crate) async fn check_or_create_table(
    session: &Session,
    cfg: &StoreConfig,
) -> Result<(), StoreError> {
    let ks = schema::keyspace_name(&cfg.keyspace);
    let timeout = cfg.request_timeout;

    let keyspaces = unpaged_rows(
        session.query_unpaged(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (&ks,),
        ),
        timeout,
    )
    .await?;
    if keyspaces.rows_num() == 0 {
        return Err(StoreError::KeyspaceMissing(ks));
    }

    let mut columns = read_columns(session, &ks, timeout).await?;
    if columns.is_empty() {
        if !cfg.create_table_if_missing {
            return Err(StoreError::TableMissing(ks));
        }
        create_table(session, schema::create_table_cql(&ks), timeout, |e| e).await?;
        columns = read_columns(session, &ks, timeout).await?;
    }
    schema::check_columns(&columns).map_err(StoreError::SchemaMismatch)?;

    if cfg.topic_index {
        let cql = schema::create_index_table_cql(&ks);
        let table = schema::INDEX_TABLE;
        ensure_side_table(session, &ks, table, cql, timeout, |e| {
            StoreError::IndexUnavailable(e.to_string())
        })
        .await?;
    }
    if cfg.replay_floor {
        let cql = schema::create_floor_table_cql(&ks);
        let table = schema::FLOOR_TABLE;
        ensure_side_table(session, &ks, table, cql, timeout, |e| {
            StoreError::FloorUnavailable(e.to_string())
        })
        .await?;
    }
    Ok(())
}

/// Makes sure one of the product's own side tables exists. A table a DBA created is used
/// as it is: Cassandra checks the CREATE permission before `IF NOT EXISTS`, so a role with
/// only SELECT/MODIFY must never send the CREATE. A refusal of the CREATE goes through
/// `unavailable` (for the index and the floor: an error that says how to do without them).
pub(crate) async fn ensure_side_table(
    session: &Session,
    ks: &str,
    table: &str,
    cql: String,
    timeout: Duration,
    unavailable: fn(StoreError) -> StoreError,
) -> Result<(), StoreError> {
    if table_exists(session, ks, table, timeout).await? {
        return Ok(());
    }
    create_table(session, cql, timeout, unavailable).await
}

/// Sends a CREATE TABLE (its refusal through `refused`) and waits until the nodes agree on
/// the schema, so that statements prepared next find the table.
async fn create_table(
    session: &Session,
    cql: String,
    timeout: Duration,
    refused: fn(StoreError) -> StoreError,
) -> Result<(), StoreError> {
    session
        .query_unpaged(cql, ())
        .await
        .map_err(|e| refused(StoreError::from_driver(e, timeout)))?;
    session
        .await_schema_agreement()
        .await
        .map_err(|e| StoreError::from_driver(e, timeout))?;
    Ok(())
}

/// Whether keyspace `ks` (as stored: unquoted) has table `table`, from the schema tables.
pub(crate) async fn table_exists(
    session: &Session,
    ks: &str,
    table: &str,
    timeout: Duration,
) -> Result<bool, StoreError> {
    let existing = unpaged_rows(session.query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
            (ks, table),
        ), timeout)
        .await?
        .rows_num();
    Ok(existing > 0)
}

async fn read_columns(
    session: &Session,
    ks: &str,
    timeout: Duration,
) -> Result<Vec<ColumnInfo>, StoreError> {
    let result = unpaged_rows(
        session.query_unpaged(
            "SELECT column_name, kind, position, clustering_order, type \
             FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
            (ks, schema::TABLE),
        ),
        timeout,
    )
    .await?;
    let rows = result
        .rows::<(String, String, i32, String, String)>()
        .map_err(db_err)?;
    rows.map(|row| {
        let (name, kind, position, clustering_order, cql_type) = row.map_err(db_err)?;
        Ok(ColumnInfo {
            name,
            kind,
            position,
            clustering_order,
            cql_type,
        })
    })
    .collect()
}
