//! Cluster-wide claims on a shared subscription group's replay (issue 15 part 4).
//!
//! `$share/g/t` spread over several EMQX nodes must get its backlog once. Each node's first
//! member takes the node-local claim (Erlang); before its replay reads anything it claims
//! `(group, filter)` here, in Cassandra, with a lightweight transaction: `INSERT ... IF NOT
//! EXISTS USING TTL`. Paxos (SERIAL consistency) makes exactly one node win however close
//! the subscribes are; the TTL ends the claim of a node that died without releasing it. The
//! holder refreshes it while its replay runs (`UPDATE ... IF holder = me`) and deletes it
//! when the group's last member on it leaves (`DELETE ... IF holder = me`).
//!
//! Why Cassandra, not something EMQX offers: EMQX gives plugins no cluster-wide lock with
//! expiry (`global`/`ekka_locker` locks die with the process that holds them and need the
//! nodes connected; a partition would let both sides replay), while every node already shares
//! the Cassandra cluster the rows live in.
//!
//! The side table is created by the first claim (not at connect): a node that never sees a
//! shared subscription needs neither the table nor the CREATE permission. Statements are
//! prepared per call: claims are rare (one per group and filter per replay).

use std::time::Duration;

use scylla::statement::SerialConsistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use crate::connection::{Connection, prepare_once_visible};
use crate::error::StoreError;
use crate::rows::{db_err, unpaged_rows};
use crate::schema;
use crate::store::Store;
use crate::table_checks::ensure_side_table;

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This holder has it (newly, or still).
    Held,
    /// Another holder (its name) has it.
    HeldBy(String),
}

impl Store {
    /// Claims `(group, filter)` for `holder` for `ttl` (whole seconds, at least 1).
    pub async fn claim_replay(
        &self,
        group: &str,
        filter: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let conn = self.inner.connection()?;
        self.ensure_claims_table(&conn).await?;
        let ttl = ttl_secs(ttl);
        let insert = self
            .claim_statement(
                &conn,
                format!(
                    "INSERT INTO {}.{} (grp, filter, holder) VALUES (?, ?, ?) IF NOT EXISTS USING TTL ?",
                    self.claims_keyspace(),
                    schema::CLAIMS_TABLE
                ),
            )
            .await?;
        let row = self
            .lwt(&conn, &insert, (group, filter, holder, ttl))
            .await?;
        match row {
            (true, _) => Ok(Claim::Held),
            (false, Some(h)) if h == holder => {
                // Ours already (an earlier member on this node): keep it alive.
                self.refresh_replay_claim(group, filter, holder, Duration::from_secs(ttl as u64))
                    .await?;
                Ok(Claim::Held)
            }
            (false, Some(h)) => Ok(Claim::HeldBy(h)),
            (false, None) => Ok(Claim::HeldBy(String::new())),
        }
    }

    /// Extends `holder`'s claim by `ttl`; false when it no longer holds it.
    pub async fn refresh_replay_claim(
        &self,
        group: &str,
        filter: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let conn = self.inner.connection()?;
        let update = self
            .claim_statement(
                &conn,
                format!(
                    "UPDATE {}.{} USING TTL ? SET holder = ? WHERE grp = ? AND filter = ? IF holder = ?",
                    self.claims_keyspace(),
                    schema::CLAIMS_TABLE
                ),
            )
            .await?;
        let (applied, _) = self
            .lwt(
                &conn,
                &update,
                (ttl_secs(ttl), holder, group, filter, holder),
            )
            .await?;
        Ok(applied)
    }

    /// Ends `holder`'s claim (nothing when another holds it).
    pub async fn release_replay_claim(
        &self,
        group: &str,
        filter: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        let conn = self.inner.connection()?;
        let delete = self
            .claim_statement(
                &conn,
                format!(
                    "DELETE FROM {}.{} WHERE grp = ? AND filter = ? IF holder = ?",
                    self.claims_keyspace(),
                    schema::CLAIMS_TABLE
                ),
            )
            .await?;
        self.lwt(&conn, &delete, (group, filter, holder)).await?;
        Ok(())
    }

    fn claims_keyspace(&self) -> String {
        schema::keyspace_cql(&self.inner.cfg.keyspace)
    }

    async fn ensure_claims_table(&self, conn: &Connection) -> Result<(), StoreError> {
        let cfg = &self.inner.cfg;
        ensure_side_table(
            &conn.session,
            &schema::keyspace_name(&cfg.keyspace),
            schema::CLAIMS_TABLE,
            schema::create_claims_table_cql(&cfg.keyspace),
            cfg.request_timeout,
            |e| e,
        )
        .await
    }

    async fn claim_statement(
        &self,
        conn: &Connection,
        cql: String,
    ) -> Result<PreparedStatement, StoreError> {
        let timeout = self.inner.cfg.request_timeout;
        // The table may be one another node created a moment ago.
        let mut stmt = prepare_once_visible(&conn.session, &cql, timeout).await?;
        stmt.set_consistency(self.inner.cfg.write_consistency);
        // One datacenter decides: LOCAL_SERIAL with local_datacenter, SERIAL otherwise.
        stmt.set_serial_consistency(Some(if self.inner.cfg.local_datacenter.is_some() {
            SerialConsistency::LocalSerial
        } else {
            SerialConsistency::Serial
        }));
        Ok(stmt)
    }

    /// Runs a conditional statement: whether it applied, and the row's holder when it did
    /// not.
    async fn lwt(
        &self,
        conn: &Connection,
        stmt: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<(bool, Option<String>), StoreError> {
        let timeout = self.inner.cfg.request_timeout;
        let result = unpaged_rows(conn.session.execute_unpaged(stmt, values), timeout).await?;
        let holder_at = result
            .column_specs()
            .iter()
            .position(|c| c.name() == "holder");
        let row: Row = result.first_row().map_err(db_err)?;
        let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
        let holder = holder_at
            .and_then(|i| row.columns.get(i).cloned().flatten())
            .and_then(|v| match v {
                CqlValue::Text(s) | CqlValue::Ascii(s) => Some(s),
                _ => None,
            });
        Ok((applied, holder))
    }
}

fn ttl_secs(ttl: Duration) -> i32 {
    ttl.as_secs().clamp(1, i32::MAX as u64) as i32
}
