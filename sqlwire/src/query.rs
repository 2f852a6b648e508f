//! Statements in, rows out: the simple protocol (`Query`) and the extended one
//! (`Parse`/`Bind`/`Describe`/`Execute`), both over a [`LakeQuery`].
//!
//! pgwire's default `on_query` plans every statement of a query string before sending the
//! first row, and its default `on_execute` collects a portal's rows into a vector before
//! sending them. Both are overridden here so rows go out as batches come in, and each
//! statement of a string starts only after the previous one finished.

use std::fmt::Debug;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use canopy_analytics::{LakeQuery, QueryStream};
use futures::channel::oneshot;
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, SendableRowStream, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, PgWireConnectionState, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::{DataRow, RowDescription};
use pgwire::messages::extendedquery::{Execute, PortalSuspended};
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::simplequery::Query;

use crate::auth::{Credentials, Session};
use crate::catalog;
use crate::encode::{self, RowEncoder};
use crate::error::lake_error;
use crate::params::{self, Placeholders};
use crate::statement::{self, Command};

/// The query handlers of every connection (they keep no per-connection state).
pub(crate) struct LakeQueries {
    lake: Arc<dyn LakeQuery>,
    parser: Arc<LakeParser>,
    credentials: Arc<dyn Credentials>,
}

impl LakeQueries {
    pub(crate) fn new(lake: Arc<dyn LakeQuery>, credentials: Arc<dyn Credentials>) -> Self {
        Self {
            parser: Arc::new(LakeParser {
                lake: Arc::clone(&lake),
            }),
            lake,
            credentials,
        }
    }

    /// One statement's response, after the node heard of it (its audit trail).
    async fn respond<C: ClientInfo>(
        &self,
        client: &C,
        sql: &str,
        command: &Command,
        format: &Format,
    ) -> PgWireResult<Response> {
        if let Some(session) = client.session_extensions().get::<Session>() {
            self.credentials.statement(&session, sql).await;
        }
        self.respond_unaudited(client, sql, command, format).await
    }

    /// One statement's response. A lake query is planned and started; its rows stream
    /// while they are sent.
    async fn respond_unaudited<C: ClientInfo>(
        &self,
        client: &C,
        sql: &str,
        command: &Command,
        format: &Format,
    ) -> PgWireResult<Response> {
        let status = client.transaction_status();
        if matches!(status, TransactionStatus::Error)
            && !matches!(command, Command::Commit | Command::Rollback)
        {
            return Err(user_error(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block"
                    .to_owned(),
            ));
        }
        Ok(match command {
            Command::Ignored(tag) => Response::Execution(Tag::new(tag)),
            Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Command::Commit if matches!(status, TransactionStatus::Error) => {
                Response::TransactionEnd(Tag::new("ROLLBACK"))
            }
            Command::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            Command::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            Command::Show { name, value } => {
                let fields = Arc::new(vec![encode::text_field(name)]);
                let row = encode::text_row(&[value]);
                let mut response = QueryResponse::new(fields, stream::iter([Ok(row)]));
                response.set_command_tag("SHOW");
                Response::Query(response)
            }
            Command::ShowUnknown(_) | Command::Copy => return Err(refusal(command)),
            Command::Catalog(query) => {
                let rows = catalog::rows(&self.lake, query).await?;
                Response::Query(QueryResponse::new(
                    Arc::new(catalog::fields(query)),
                    stream::iter(rows.into_iter().map(Ok)),
                ))
            }
            Command::Lake => {
                let started = std::time::Instant::now();
                let rows = self
                    .lake
                    .execute(sql)
                    .await
                    .inspect_err(|_| canopy_analytics::record_query("pgwire", started, false))
                    .map_err(lake_error)?;
                rows.observe("pgwire", started);
                let schema = rows.schema();
                let fields = encode::fields(&schema, format);
                let encoder = RowEncoder::new(&fields, &schema);
                Response::Query(QueryResponse::new(
                    Arc::new(fields),
                    row_stream(rows, encoder),
                ))
            }
        })
    }

    /// Runs one statement of a simple query and sends its whole answer.
    async fn simple_statement<C>(
        &self,
        client: &mut C,
        sql: &str,
        cancel: &mut Cancel,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let command = statement::classify(sql);
        let response = tokio::select! {
            response = self.respond(client, sql, &command, &Format::UnifiedText) => response?,
            () = cancel.requested() => return Err(PgWireError::QueryCanceled),
        };
        match response {
            Response::Query(mut response) => {
                let description =
                    RowDescription::new(response.row_schema().iter().map(Into::into).collect());
                client
                    .feed(PgWireBackendMessage::RowDescription(description))
                    .await?;
                let (rows, _) = send_rows(client, response.data_rows(), 0, cancel).await?;
                let tag = Tag::new(response.command_tag()).with_rows(rows);
                client
                    .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                    .await?;
            }
            other => send_outcome(client, other).await?,
        }
        Ok(())
    }

    /// Executes (or resumes) a portal, sending at most `max_rows` rows (0: all).
    async fn execute_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        max_rows: usize,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut cancel = Cancel::arm(client).await;
        let state = portal.state();
        let mut state = state.lock().await;
        let previous = std::mem::replace(&mut *state, PortalExecutionState::Finished);
        let mut response = match previous {
            PortalExecutionState::Initial => {
                let response = tokio::select! {
                    response = ExtendedQueryHandler::do_query(self, client, portal, max_rows) => response?,
                    () = cancel.requested() => return Err(PgWireError::QueryCanceled),
                };
                match response {
                    Response::Query(response) => response,
                    other => return send_outcome(client, other).await,
                }
            }
            PortalExecutionState::Suspended(response) => response,
            PortalExecutionState::Finished => {
                let tag = Tag::new("SELECT").with_rows(0);
                client
                    .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                    .await?;
                return Ok(());
            }
        };
        let (rows, more) = send_rows(client, response.data_rows(), max_rows, &mut cancel).await?;
        if more {
            *state = PortalExecutionState::Suspended(response);
            client
                .feed(PgWireBackendMessage::PortalSuspended(PortalSuspended::new()))
                .await?;
        } else {
            let tag = Tag::new(response.command_tag()).with_rows(rows);
            client
                .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                .await?;
        }
        Ok(())
    }
}

/// Sends a response without rows, tracking the transaction block it opens or closes.
async fn send_outcome<C>(client: &mut C, response: Response) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let tag = match response {
        Response::EmptyQuery => {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
            return Ok(());
        }
        Response::Execution(tag) => tag,
        Response::TransactionStart(tag) => {
            if matches!(client.transaction_status(), TransactionStatus::Idle) {
                client.set_transaction_status(TransactionStatus::Transaction);
            }
            tag
        }
        Response::TransactionEnd(tag) => {
            client.set_transaction_status(TransactionStatus::Idle);
            tag
        }
        Response::Error(error) => return Err(PgWireError::UserError(error)),
        Response::Query(_) | Response::CopyIn(_) | Response::CopyOut(_) | Response::CopyBoth(_) => {
            return Err(user_error(
                "XX000",
                "internal: a response of an unexpected kind".to_owned(),
            ));
        }
    };
    client
        .feed(PgWireBackendMessage::CommandComplete(
            CommandComplete::from(tag),
        ))
        .await?;
    Ok(())
}

/// Sends rows until the stream ends (`false`) or `max_rows` were sent (`true`; 0 means no
/// limit). `feed` flushes as the send buffer fills, so a slow client slows the query
/// instead of growing memory.
async fn send_rows<C>(
    client: &mut C,
    rows: &mut SendableRowStream,
    max_rows: usize,
    cancel: &mut Cancel,
) -> PgWireResult<(usize, bool)>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let mut sent = 0;
    loop {
        if max_rows > 0 && sent == max_rows {
            return Ok((sent, true));
        }
        let row = tokio::select! {
            row = rows.next() => row,
            () = cancel.requested() => return Err(PgWireError::QueryCanceled),
        };
        match row {
            Some(row) => {
                client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                sent += 1;
            }
            None => return Ok((sent, false)),
        }
    }
}

/// A query's batches as `DataRow`s, one batch encoded at a time.
fn row_stream(rows: QueryStream, encoder: RowEncoder) -> SendableRowStream {
    Box::pin(rows.flat_map(move |batch| {
        let rows: Vec<PgWireResult<DataRow>> = match batch {
            Ok(batch) => match encoder.encode(&batch) {
                Ok(rows) => rows.into_iter().map(Ok).collect(),
                Err(error) => vec![Err(user_error(
                    "XX000",
                    format!("encoding a row for the client: {error}"),
                ))],
            },
            Err(error) => vec![Err(lake_error(error))],
        };
        stream::iter(rows)
    }))
}

/// A client's cancel request (sent on a separate connection) for the running query.
enum Cancel {
    Armed(oneshot::Receiver<()>),
    Requested,
    Never,
}

impl Cancel {
    async fn arm<C: ClientInfo>(client: &C) -> Self {
        match client.session_extensions().get::<Arc<ConnectionHandle>>() {
            Some(handle) => Self::Armed(handle.start_query().await),
            None => Self::Never,
        }
    }

    /// Resolves once the client asked to cancel; pending otherwise.
    async fn requested(&mut self) {
        if let Self::Armed(receiver) = self {
            // The sender goes away unfired when the next query arms a new one.
            *self = match receiver.await {
                Ok(()) => Self::Requested,
                Err(_) => Self::Never,
            };
        }
        if matches!(self, Self::Never) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for LakeQueries {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let statements = statement::split(&query.query);
        if statements.is_empty() {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
        }
        let mut cancel = Cancel::arm(client).await;
        for sql in statements {
            match self.simple_statement(client, sql, &mut cancel).await {
                Ok(()) => {}
                // The connection itself failed: nothing more can be said on it.
                Err(error @ PgWireError::IoError(_)) => return Err(error),
                // Like PostgreSQL, the first failing statement ends the query string.
                Err(error) => {
                    client
                        .feed(PgWireBackendMessage::ErrorResponse(
                            ErrorInfo::from(error).into(),
                        ))
                        .await?;
                    if matches!(client.transaction_status(), TransactionStatus::Transaction) {
                        client.set_transaction_status(TransactionStatus::Error);
                    }
                    break;
                }
            }
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        let status = client.transaction_status();
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                status,
            )))
            .await?;
        Ok(())
    }

    /// Answers every statement of `query` in order, up to the first that fails. The rows of
    /// query results stream as they are consumed; `on_query` sends them one statement at a
    /// time instead, so this serves callers that want the responses as values.
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut responses = Vec::new();
        for sql in statement::split(query) {
            let command = statement::classify(sql);
            match self
                .respond(client, sql, &command, &Format::UnifiedText)
                .await
            {
                Ok(response) => responses.push(response),
                Err(error) => {
                    responses.push(Response::Error(Box::new(error.into())));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for LakeQueries {
    type Statement = Prepared;
    type QueryParser = LakeParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal)) => portal,
            Some(Entry::Empty) => {
                return send_outcome(client, Response::EmptyQuery).await;
            }
            None => return Err(PgWireError::PortalNotFound(name.to_owned())),
        };
        client.set_state(PgWireConnectionState::QueryInProgress);
        let max_rows = usize::try_from(message.max_rows).unwrap_or(0);
        let result = self.execute_portal(client, &portal, max_rows).await;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        result
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        if portal.parameters.len() != prepared.placeholders.count {
            return Err(user_error(
                "08P01",
                format!(
                    "bind message supplies {} parameters, but prepared statement requires {}",
                    portal.parameters.len(),
                    prepared.placeholders.count
                ),
            ));
        }
        if prepared.placeholders.count == 0 {
            return self
                .respond(
                    client,
                    &prepared.sql,
                    &prepared.command,
                    &portal.result_column_format,
                )
                .await;
        }
        let literals = portal
            .parameters
            .iter()
            .zip(&prepared.parameter_types)
            .enumerate()
            .map(|(index, (value, ty))| {
                params::literal(
                    ty,
                    value.as_deref(),
                    portal.parameter_format.is_binary(index),
                )
            })
            .collect::<PgWireResult<Vec<String>>>()?;
        let sql = prepared.placeholders.substitute(&prepared.sql, &literals);
        if let Some(session) = client.session_extensions().get::<Session>() {
            self.credentials.statement(&session, &prepared.sql).await;
        }
        self.respond_unaudited(
            client,
            &sql,
            &prepared.command,
            &portal.result_column_format,
        )
        .await
    }
}

/// A statement prepared by `Parse`: lake queries are planned then, to describe their rows
/// (with a typed NULL for each parameter).
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    sql: String,
    command: Command,
    schema: Option<SchemaRef>,
    placeholders: Placeholders,
    /// What each parameter is announced as and its value decoded as.
    parameter_types: Vec<Type>,
}

#[derive(Debug)]
pub(crate) struct LakeParser {
    lake: Arc<dyn LakeQuery>,
}

#[async_trait]
impl QueryParser for LakeParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statements = statement::split(sql);
        let sql = match statements.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(user_error(
                    "42601",
                    "cannot insert multiple commands into a prepared statement".to_owned(),
                ));
            }
        };
        let placeholders = Placeholders::find(sql)?;
        let command = statement::classify(sql);
        let untyped = (0..placeholders.count).any(|index| {
            types
                .get(index)
                .and_then(Option::as_ref)
                .is_none_or(|ty| *ty == Type::UNKNOWN)
        });
        let inferred = match command {
            Command::Lake if untyped => self.lake.parameter_types(sql).await,
            _ => Vec::new(),
        };
        let parameter_types: Vec<Type> = (0..placeholders.count)
            .map(|index| {
                params::announced(
                    types.get(index).and_then(Option::as_ref),
                    inferred.get(index).and_then(Option::as_ref),
                )
            })
            .collect();
        let schema = match command {
            // Starting the query is how the lake tells its result schema; dropping the
            // stream right away cancels it. `Execute` starts it again, with the values.
            Command::Lake => {
                let nulls: Vec<String> = parameter_types.iter().map(params::null_literal).collect();
                let described = placeholders.substitute(sql, &nulls);
                Some(
                    self.lake
                        .execute(&described)
                        .await
                        .map_err(lake_error)?
                        .schema(),
                )
            }
            Command::ShowUnknown(_) | Command::Copy => return Err(refusal(&command)),
            _ => None,
        };
        Ok(Some(Prepared {
            sql: sql.to_owned(),
            command,
            schema,
            placeholders,
            parameter_types,
        }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(statement.parameter_types.clone())
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.cloned().unwrap_or_default();
        Ok(match (&statement.command, &statement.schema) {
            (Command::Lake, Some(schema)) => encode::fields(schema, &format),
            (Command::Show { name, .. }, _) => vec![encode::text_field(name)],
            (Command::Catalog(query), _) => catalog::fields(query),
            _ => Vec::new(),
        })
    }
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}

/// Statements answered with an error without asking the lake.
fn refusal(command: &Command) -> PgWireError {
    match command {
        Command::ShowUnknown(name) => user_error(
            "42704",
            format!("unrecognized configuration parameter \"{name}\""),
        ),
        _ => user_error(
            "25006",
            "sql_not_read_only: COPY is not supported; the lake is read-only here, \
             query it with SELECT"
                .to_owned(),
        ),
    }
}
