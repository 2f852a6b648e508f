//! Consistent copies of the metadata store for `canopy backup`, and loading one back.
//!
//! SQLite: `VACUUM INTO` a file (one read transaction, so writers carry on, and free pages
//! holding erased rows are not copied). PostgreSQL: every table of the schema copied out
//! in one `REPEATABLE READ` read-only transaction (one snapshot of all of them), framed
//! as below, and copied back in (dependencies first) into a freshly migrated, empty
//! database.
//!
//! The PostgreSQL dump: the line `canopy-postgres-dump 1`, then per table a JSON line
//! `{"table": …, "columns": [...]}` and its `COPY … TO STDOUT` text in frames (a
//! big-endian u32 length, then the bytes), a zero length ending the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ServingError;
use crate::store::{PostgresStore, SqliteStore, StoreResult};

const DUMP_MAGIC: &str = "canopy-postgres-dump 1\n";
/// The migrations' own bookkeeping: written by `migrate`, never copied.
const MIGRATIONS_TABLE: &str = "canopy_migrations";
/// A frame larger than this is a corrupt dump, not a row.
const MAX_FRAME: u32 = 64 << 20;

#[derive(Serialize, Deserialize)]
struct TableHeader {
    table: String,
    columns: Vec<String>,
}

/// What a copy held: rows per table.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpSummary {
    pub tables: BTreeMap<String, u64>,
    /// The migrations applied to the copied database, in order.
    pub migrations: Vec<String>,
}

impl SqliteStore {
    /// A consistent copy of the whole database in one new file at `path`.
    pub async fn snapshot_into(&self, path: &Path) -> StoreResult<Vec<String>> {
        let target = path.to_str().ok_or_else(|| {
            ServingError::Internal(format!("{} is not a UTF-8 path", path.display()))
        })?;
        sqlx::query("VACUUM INTO $1")
            .bind(target)
            .execute(self.pool())
            .await?;
        let migrations: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM canopy_migrations ORDER BY name")
                .fetch_all(self.pool())
                .await?;
        Ok(migrations.into_iter().map(|(name,)| name).collect())
    }
}

macro_rules! last_anchor_batch {
    ($store:ty) => {
        impl $store {
            /// The newest anchor batch the store holds.
            pub async fn last_anchor_batch(&self) -> StoreResult<Option<i64>> {
                let (last,): (Option<i64>,) =
                    sqlx::query_as("SELECT MAX(batch_id) FROM anchor_batches")
                        .fetch_one(self.pool())
                        .await?;
                Ok(last)
            }
        }
    };
}
last_anchor_batch!(SqliteStore);
last_anchor_batch!(PostgresStore);

/// The schema's tables, each after the tables it references (so loading in this order
/// satisfies every foreign key).
async fn tables_in_dependency_order(
    connection: &mut sqlx::PgConnection,
) -> StoreResult<Vec<String>> {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&mut *connection)
    .await?;
    let references: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, r.relname::text FROM pg_constraint k \
         JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid \
         WHERE k.contype = 'f' AND k.connamespace = current_schema()::regnamespace",
    )
    .fetch_all(&mut *connection)
    .await?;
    let mut needs: BTreeMap<String, BTreeSet<String>> = tables
        .into_iter()
        .map(|(table,)| (table, BTreeSet::new()))
        .collect();
    for (table, referenced) in references {
        if table != referenced && needs.contains_key(&referenced) {
            needs.entry(table).or_default().insert(referenced);
        }
    }
    let mut ordered = Vec::with_capacity(needs.len());
    while !needs.is_empty() {
        let ready: Vec<String> = needs
            .iter()
            .filter(|(_, wanted)| wanted.is_empty())
            .map(|(table, _)| table.clone())
            .collect();
        if ready.is_empty() {
            return Err(ServingError::Internal(format!(
                "the tables {:?} reference each other in a circle",
                needs.keys().collect::<Vec<_>>()
            )));
        }
        for table in &ready {
            needs.remove(table);
        }
        for wanted in needs.values_mut() {
            for table in &ready {
                wanted.remove(table);
            }
        }
        ordered.extend(ready);
    }
    Ok(ordered)
}

/// The columns a copy carries: every column but generated ones (the database computes
/// those again).
async fn copied_columns(
    connection: &mut sqlx::PgConnection,
    table: &str,
) -> StoreResult<Vec<String>> {
    let columns: Vec<(String,)> = sqlx::query_as(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 AND is_generated = 'NEVER' \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *connection)
    .await?;
    Ok(columns.into_iter().map(|(column,)| column).collect())
}

fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quoted(c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn corrupt(why: impl std::fmt::Display) -> ServingError {
    ServingError::BadRequest(format!("the PostgreSQL dump is not valid: {why}"))
}

fn io_error(error: std::io::Error) -> ServingError {
    ServingError::Storage(format!("writing the PostgreSQL dump: {error}"))
}

impl PostgresStore {
    /// Copies every table out of one snapshot of the database into `out`.
    pub async fn dump_into<W: AsyncWrite + Unpin>(&self, out: &mut W) -> StoreResult<DumpSummary> {
        let mut connection = self.pool().acquire().await?;
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *connection)
            .await?;
        let dumped = async {
            out.write_all(DUMP_MAGIC.as_bytes())
                .await
                .map_err(io_error)?;
            let mut summary = DumpSummary::default();
            let migrations: Vec<(String,)> =
                sqlx::query_as("SELECT name FROM canopy_migrations ORDER BY name")
                    .fetch_all(&mut *connection)
                    .await?;
            summary.migrations = migrations.into_iter().map(|(name,)| name).collect();
            for table in tables_in_dependency_order(&mut connection).await? {
                if table == MIGRATIONS_TABLE {
                    continue;
                }
                let columns = copied_columns(&mut connection, &table).await?;
                let header = serde_json::to_string(&TableHeader {
                    table: table.clone(),
                    columns: columns.clone(),
                })
                .map_err(|e| ServingError::Internal(e.to_string()))?;
                out.write_all(header.as_bytes()).await.map_err(io_error)?;
                out.write_all(b"\n").await.map_err(io_error)?;
                let statement = format!(
                    "COPY {} ({}) TO STDOUT",
                    quoted(&table),
                    column_list(&columns)
                );
                let mut rows = 0u64;
                {
                    let mut stream = connection.copy_out_raw(&statement).await?;
                    while let Some(bytes) = stream.try_next().await? {
                        rows += bytes.iter().filter(|b| **b == b'\n').count() as u64;
                        for frame in bytes.chunks(MAX_FRAME as usize) {
                            out.write_all(&(frame.len() as u32).to_be_bytes())
                                .await
                                .map_err(io_error)?;
                            out.write_all(frame).await.map_err(io_error)?;
                        }
                    }
                }
                out.write_all(&0u32.to_be_bytes()).await.map_err(io_error)?;
                summary.tables.insert(table, rows);
            }
            out.flush().await.map_err(io_error)?;
            Ok::<_, ServingError>(summary)
        }
        .await;
        sqlx::query("ROLLBACK").execute(&mut *connection).await?;
        dumped
    }

    /// Loads a dump into this database, which must be migrated to exactly the dump's
    /// migrations and hold no rows: all of it or none of it (one transaction).
    pub async fn load_dump<R: tokio::io::AsyncRead + Unpin>(
        &self,
        input: &mut R,
        migrations: &[String],
    ) -> StoreResult<DumpSummary> {
        let mut connection = self.pool().acquire().await?;
        let applied: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM canopy_migrations ORDER BY name")
                .fetch_all(&mut *connection)
                .await?;
        let applied: Vec<String> = applied.into_iter().map(|(name,)| name).collect();
        if applied != migrations {
            return Err(ServingError::BadRequest(format!(
                "the backup's database is at migration {:?} and this one at {:?}: restore \
                 with the Canopy version that took the backup, then upgrade",
                migrations.last(),
                applied.last()
            )));
        }
        let tables = tables_in_dependency_order(&mut connection).await?;
        for table in &tables {
            if table == MIGRATIONS_TABLE {
                continue;
            }
            let (any,): (bool,) = sqlx::query_as(AssertSqlSafe(format!(
                // Identifiers from the catalog, quoted.
                "SELECT EXISTS (SELECT 1 FROM {})",
                quoted(table)
            )))
            .fetch_one(&mut *connection)
            .await?;
            if any {
                return Err(ServingError::Conflict(format!(
                    "the database already holds rows in {table}: restore into an empty one"
                )));
            }
        }
        let mut magic = vec![0u8; DUMP_MAGIC.len()];
        input.read_exact(&mut magic).await.map_err(corrupt)?;
        if magic != DUMP_MAGIC.as_bytes() {
            return Err(corrupt("it does not start with the dump's header"));
        }
        sqlx::query("BEGIN").execute(&mut *connection).await?;
        let loaded = async {
            let mut summary = DumpSummary {
                migrations: migrations.to_vec(),
                ..DumpSummary::default()
            };
            while let Some(header) = read_header(input).await? {
                if !tables.contains(&header.table) || header.table == MIGRATIONS_TABLE {
                    return Err(corrupt(format!("unknown table {}", header.table)));
                }
                let statement = format!(
                    "COPY {} ({}) FROM STDIN",
                    quoted(&header.table),
                    column_list(&header.columns)
                );
                let mut copy = connection.copy_in_raw(&statement).await?;
                loop {
                    let mut length = [0u8; 4];
                    input.read_exact(&mut length).await.map_err(corrupt)?;
                    let length = u32::from_be_bytes(length);
                    if length == 0 {
                        break;
                    }
                    if length > MAX_FRAME {
                        return Err(corrupt(format!("a frame of {length} bytes")));
                    }
                    let mut frame = vec![0u8; length as usize];
                    input.read_exact(&mut frame).await.map_err(corrupt)?;
                    copy.send(frame).await?;
                }
                let rows = copy.finish().await?;
                summary.tables.insert(header.table, rows);
            }
            // Serial columns continue after the loaded rows.
            let serials: Vec<(String, String)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'",
            )
            .fetch_all(&mut *connection)
            .await?;
            for (table, column) in serials {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE(MAX({}), 0) + 1, false) FROM {}",
                    quoted(&column),
                    quoted(&table)
                )))
                .bind(quoted(&table))
                .bind(&column)
                .execute(&mut *connection)
                .await?;
            }
            Ok::<_, ServingError>(summary)
        }
        .await;
        match loaded {
            Ok(summary) => {
                sqlx::query("COMMIT").execute(&mut *connection).await?;
                Ok(summary)
            }
            Err(error) => {
                sqlx::query("ROLLBACK").execute(&mut *connection).await?;
                Err(error)
            }
        }
    }
}

/// The next table's header line, or None at the end of the dump.
async fn read_header<R: tokio::io::AsyncRead + Unpin>(
    input: &mut R,
) -> StoreResult<Option<TableHeader>> {
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        match input.read(&mut byte).await.map_err(corrupt)? {
            0 if line.is_empty() => return Ok(None),
            0 => return Err(corrupt("it ends inside a table's header")),
            _ if byte[0] == b'\n' => break,
            _ if line.len() > 64 << 10 => return Err(corrupt("a header line is too long")),
            _ => line.push(byte[0]),
        }
    }
    serde_json::from_slice(&line).map(Some).map_err(corrupt)
}
