//! The analytics lake over the PostgreSQL wire protocol, so `psql`, BI tools and PostgreSQL
//! drivers can query it.
//!
//! ```text
//!  psql / driver ──TCP──▶ PgServer accept loop ──▶ serve_connection (per connection)
//!                          (FATAL 53300 past the cap)  ├─ SSLRequest ─▶ rustls (server.rs)
//!                                                      ├─ ScramStartup ─▶ Credentials::admit/settle
//!                                                      └─ pgwire::process_message ─▶ LakeQueries
//!                                                           ├─ Credentials::statement (audit)
//!                                                           ├─ params: $n ─▶ typed literals
//!                                                           ├─ catalog: psql \d, JDBC metadata
//!                                                           └─ LakeQuery::execute ─▶ DataRows
//! ```
//!
//! # Design
//!
//! - **Own accept and connection loops.** [`PgServer::start`] binds the listener itself, so
//!   a test can ask for port 0 and read the port back ([`PgServer::local_addr`]), and so
//!   [`PgServer::shutdown`] can stop accepting and drop open connections. Each connection
//!   negotiates TLS here (with the caller's `rustls::ServerConfig`, [`PortOptions::tls`]) and then feeds pgwire's `process_message`; at most
//!   [`PortOptions::max_connections`] are served at once, and a client may send at most
//!   [`PRE_AUTH_BYTES`] before it signed in.
//! - **SCRAM-SHA-256 only** ([`scram`]). The node hands [`Credentials::admit`] the verifiers
//!   of the account's SQL tokens (made-up ones for anyone else), hears every outcome in
//!   [`Credentials::settle`] and every statement in [`Credentials::statement`]. A failure is
//!   a FATAL error with SQLSTATE 28P01 and PostgreSQL's own message (`password
//!   authentication failed for user "…"`), whatever the cause. Startup reports
//!   `server_version` [`SERVER_VERSION`], UTF8 encodings, `DateStyle` `ISO, MDY`,
//!   `TimeZone` UTC, `integer_datetimes` and `standard_conforming_strings` on, and
//!   `default_transaction_read_only` on so clients know writes will not work.
//! - **Protocol parts.** The simple protocol (what `psql -c` uses), several statements per
//!   string included (run one after the other, stopping at the first error), and the
//!   extended protocol (Parse/Bind/Describe/Execute/Sync, with `max_rows` portals, as
//!   drivers and BI tools use it) in text and binary result formats. Parameters (`$1`) are
//!   bound as typed literals, from text or binary values; untyped ones are announced as
//!   the type the lake infers for them, else TEXT.
//!   Cancel requests stop the running query (57014).
//! - **Not the lake's statements.** `SET`, `RESET`, `DISCARD` are accepted and ignored;
//!   `BEGIN`/`COMMIT`/`ROLLBACK` only track the transaction status clients expect (every
//!   statement reads the lake as it is when it starts). `SHOW` answers the common
//!   PostgreSQL parameters (`server_version`, `client_encoding`,
//!   `transaction_isolation`, `standard_conforming_strings`, …) and refuses unknown ones
//!   (42704); `SHOW TABLES` and `SHOW COLUMNS` go to the lake. `COPY` is refused.
//!   Everything else goes to [`LakeQuery::execute`], which refuses DDL, DML and `SET`
//!   (25006). Of `pg_catalog`, only the queries psql sends for `\d`/`\dt` and JDBC for
//!   `getTables`/`getColumns` are answered (`catalog`, from the lake's schemas); other
//!   catalog browsing fails; plain SQL and `information_schema` work.
//! - **Errors** carry the lake's stable code first in the message (`sql_not_read_only: …`,
//!   `query_timeout: …`) and a SQLSTATE: 25006 not read-only, 57014 timeout, 53200
//!   memory, 42601 syntax, 42P01 unknown table, 42703 unknown column, 22012 division by
//!   zero, 42000 other SQL errors, 58030 lake I/O, XX000 the rest.
//! - **Streaming.** Rows are encoded one Arrow batch at a time as the query produces them
//!   and fed to the socket, which flushes as its buffer fills: a result never sits whole in
//!   memory, and a slow client slows its query down. An error after rows were sent still
//!   reaches the client as an ErrorResponse (the rows before it were sent).
//! - **Limits.** Each statement runs under the lake's [`SqlLimits`]
//!   (`canopy_analytics::SqlLimits`): its time limit counts from planning to the last row
//!   (including time spent waiting on a slow client) and its memory limit is per statement.
//!   Describing a statement (Parse) plans and starts it to learn its columns, then drops it;
//!   Execute runs it again.
//!
//! [`SqlLimits`]: canopy_analytics::SqlLimits

#![deny(unsafe_code)]

mod auth;
mod catalog;
mod encode;
mod error;
mod params;
mod query;
pub mod scram;
mod server;
mod statement;

pub use auth::{Admission, Credentials, Pending, Session, SignIn};
pub use canopy_analytics::LakeSql;
pub use error::SqlWireError;
pub use server::{MAX_CONNECTIONS, PRE_AUTH_BYTES, PgServer, PortOptions};

/// The `server_version` clients see: PostgreSQL 15's protocol and behaviour, and what
/// actually answers.
pub const SERVER_VERSION: &str = "15.0 (canopy)";
