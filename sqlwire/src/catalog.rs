//! The few `pg_catalog` queries psql sends for `\d <table>`, answered from the lake's own
//! tables and Arrow schemas.
//!
//! The lake has no `pg_catalog` (DataFusion has no `regclass`, `OPERATOR(pg_catalog.~)` or
//! `pg_table_is_visible`), so the queries psql 15 and later send for `\d name` are
//! recognised by their shape and answered here: the relation lookup (by psql's regular
//! expression, `*` and `?` wildcards included), the relation's flags (a plain table, no
//! indexes, rules, triggers or row security) and its columns with PostgreSQL's type names;
//! `\d` and `\dt` without a name list the tables; the policy, statistics, publication and inheritance lookups that follow get no rows.
//! Any other catalog query goes to the lake as before and fails there.

use std::sync::Arc;

use arrow_cast::display::{ArrayFormatter, FormatOptions};
use bytes::{BufMut, BytesMut};
use canopy_analytics::LakeQuery;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::FieldInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;

use crate::encode;
use crate::error::lake_error;

/// The oid of the first lake table; they are numbered in name order from here (PostgreSQL's
/// first oid for user objects).
const FIRST_OID: u32 = 16_384;

/// A catalog query psql sends for `\d`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CatalogQuery {
    /// psql's `\d` / `\dt [pattern]` list: schema, name, type, owner of each table.
    List { pattern: Option<String> },
    /// The tables whose name matches psql's pattern (`^(votes)$`): oid, schema, name.
    Relations { pattern: String },
    /// One table's flags, by the oid [`CatalogQuery::Relations`] gave it.
    Relation { oid: u32 },
    /// One table's columns, by its oid.
    Attributes { oid: u32 },
    /// pgjdbc's `DatabaseMetaData.getTables`: tables whose schema and name are `LIKE` these.
    JdbcTables {
        schema: Option<String>,
        table: Option<String>,
    },
    /// pgjdbc's `DatabaseMetaData.getColumns`: the raw rows it builds its answer from.
    JdbcColumns {
        schema: Option<String>,
        table: Option<String>,
        column: Option<String>,
    },
    /// A catalog the lake has nothing in: no rows, this many columns.
    Empty(usize),
}

/// The catalog query `sql` is, if it is one of psql's `\d` queries.
pub(crate) fn recognise(sql: &str) -> Option<CatalogQuery> {
    // ASCII lower-casing keeps byte offsets, so positions found in `lower` cut `sql`.
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("pg_catalog.") {
        return None;
    }
    let quoted_after = |marker: &str| -> Option<&str> {
        let start = lower.find(marker)? + marker.len();
        let end = start + sql[start..].find('\'')?;
        Some(&sql[start..end])
    };
    let oid_after = |marker: &str| quoted_after(marker)?.parse::<u32>().ok();
    let like = |marker: &str| quoted_after(marker).map(str::to_owned);
    if lower.contains("as table_cat, n.nspname as table_schem") {
        return Some(CatalogQuery::JdbcTables {
            schema: like("n.nspname like '"),
            table: like("c.relname like '"),
        });
    }
    if lower.contains("a.attnotnull or (t.typtype = 'd'") {
        return Some(CatalogQuery::JdbcColumns {
            schema: like("n.nspname like '"),
            table: like("c.relname like '"),
            column: like("attname like '"),
        });
    }
    // Order matters: the publication query mentions pg_attribute and pg_class too.
    if lower.contains("from pg_catalog.pg_publication") {
        return Some(CatalogQuery::Empty(3));
    }
    if lower.contains("from pg_catalog.pg_policy") {
        return Some(CatalogQuery::Empty(6));
    }
    if lower.contains("from pg_catalog.pg_statistic_ext") {
        return Some(CatalogQuery::Empty(9));
    }
    if lower.contains("pg_catalog.pg_inherits") {
        let columns = if lower.contains("inhdetachpending") {
            4
        } else {
            1
        };
        return Some(CatalogQuery::Empty(columns));
    }
    if lower.contains("from pg_catalog.pg_attribute a") {
        return oid_after("a.attrelid = '").map(|oid| CatalogQuery::Attributes { oid });
    }
    if lower.contains("c.relchecks") {
        return oid_after("where c.oid = '").map(|oid| CatalogQuery::Relation { oid });
    }
    let pattern = quoted_after("c.relname operator(pg_catalog.~) '").map(str::to_owned);
    if lower.contains("c.relkind in (") && lower.contains("pg_get_userbyid(c.relowner)") {
        return Some(CatalogQuery::List { pattern });
    }
    if lower.contains("from pg_catalog.pg_class c") {
        return quoted_after("c.relname operator(pg_catalog.~) '").map(|pattern| {
            CatalogQuery::Relations {
                pattern: pattern.to_owned(),
            }
        });
    }
    None
}

/// The columns of the answer to `query` (all TEXT, which is how psql reads them).
pub(crate) fn fields(query: &CatalogQuery) -> Vec<FieldInfo> {
    let names: Vec<&str> = match query {
        CatalogQuery::List { .. } => vec!["Schema", "Name", "Type", "Owner"],
        CatalogQuery::Relations { .. } => vec!["oid", "nspname", "relname"],
        CatalogQuery::Relation { .. } => vec![
            "relchecks",
            "relkind",
            "relhasindex",
            "relhasrules",
            "relhastriggers",
            "relrowsecurity",
            "relforcerowsecurity",
            "relhasoids",
            "relispartition",
            "?column?",
            "reltablespace",
            "reloftype",
            "relpersistence",
            "relreplident",
            "amname",
        ],
        CatalogQuery::Attributes { .. } => vec![
            "attname",
            "format_type",
            "pg_get_expr",
            "attnotnull",
            "attcollation",
            "attidentity",
            "attgenerated",
        ],
        CatalogQuery::JdbcTables { .. } => vec![
            "table_cat",
            "table_schem",
            "table_name",
            "table_type",
            "remarks",
            "type_cat",
            "type_schem",
            "type_name",
            "self_referencing_col_name",
            "ref_generation",
        ],
        CatalogQuery::JdbcColumns { .. } => vec![
            "nspname",
            "relname",
            "attname",
            "atttypid",
            "attnotnull",
            "atttypmod",
            "attlen",
            "typtypmod",
            "attnum",
            "attidentity",
            "attgenerated",
            "adsrc",
            "description",
            "typbasetype",
            "typtype",
        ],
        CatalogQuery::Empty(columns) => vec!["?column?"; *columns],
    };
    names.into_iter().map(encode::text_field).collect()
}

/// The rows answering `query`.
pub(crate) async fn rows(
    lake: &Arc<dyn LakeQuery>,
    query: &CatalogQuery,
) -> PgWireResult<Vec<DataRow>> {
    let tables = || tables(lake);
    Ok(match query {
        CatalogQuery::List { pattern } => tables()
            .await?
            .into_iter()
            .filter(|name| pattern.as_ref().is_none_or(|p| matches_pattern(p, name)))
            .map(|name| row(&[Some("public"), Some(&name), Some("table"), Some("canopy")]))
            .collect(),
        CatalogQuery::Relations { pattern } => tables()
            .await?
            .into_iter()
            .enumerate()
            .filter(|(_, name)| matches_pattern(pattern, name))
            .map(|(index, name)| {
                let oid = oid_of(index).to_string();
                row(&[Some(&oid), Some("public"), Some(&name)])
            })
            .collect(),
        CatalogQuery::Relation { oid } => match table_of(&tables().await?, *oid) {
            Some(_) => vec![row(&[
                Some("0"),
                Some("r"),
                Some("f"),
                Some("f"),
                Some("f"),
                Some("f"),
                Some("f"),
                Some("f"),
                Some("f"),
                Some(""),
                Some("0"),
                Some(""),
                Some("p"),
                Some("d"),
                Some("heap"),
            ])],
            None => Vec::new(),
        },
        CatalogQuery::Attributes { oid } => match table_of(&tables().await?, *oid) {
            Some(table) => columns(lake, table)
                .await?
                .iter()
                .map(|(column, field)| {
                    let not_null = if column.is_nullable() { "f" } else { "t" };
                    row(&[
                        Some(column.name()),
                        Some(format_type(field.datatype())),
                        None,
                        Some(not_null),
                        None,
                        Some(""),
                        Some(""),
                    ])
                })
                .collect(),
            None => Vec::new(),
        },
        CatalogQuery::JdbcTables { schema, table } => {
            if !like_public(schema.as_deref()) {
                return Ok(Vec::new());
            }
            tables()
                .await?
                .into_iter()
                .filter(|name| table.as_ref().is_none_or(|p| matches_like(p, name)))
                .map(|name| {
                    row(&[
                        None,
                        Some("public"),
                        Some(&name),
                        Some("TABLE"),
                        None,
                        Some(""),
                        Some(""),
                        Some(""),
                        Some(""),
                        Some(""),
                    ])
                })
                .collect()
        }
        CatalogQuery::JdbcColumns {
            schema,
            table,
            column,
        } => {
            if !like_public(schema.as_deref()) {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for name in tables().await? {
                if table.as_ref().is_some_and(|p| !matches_like(p, &name)) {
                    continue;
                }
                let fields = columns(lake, &name).await?;
                for (index, (field, info)) in fields.iter().enumerate() {
                    if column
                        .as_ref()
                        .is_some_and(|p| !matches_like(p, field.name()))
                    {
                        continue;
                    }
                    let oid = info.datatype().oid().to_string();
                    let not_null = if field.is_nullable() { "f" } else { "t" };
                    let length = info.type_size().to_string();
                    let number = (index + 1).to_string();
                    out.push(row(&[
                        Some("public"),
                        Some(&name),
                        Some(field.name()),
                        Some(&oid),
                        Some(not_null),
                        Some("-1"),
                        Some(&length),
                        Some("-1"),
                        Some(&number),
                        None,
                        None,
                        None,
                        None,
                        Some("0"),
                        Some("b"),
                    ]));
                }
            }
            out
        }
        CatalogQuery::Empty(_) => Vec::new(),
    })
}

/// A table's Arrow fields with what each is sent as.
async fn columns(
    lake: &Arc<dyn LakeQuery>,
    table: &str,
) -> PgWireResult<Vec<(arrow_schema::FieldRef, FieldInfo)>> {
    let sql = format!("SELECT * FROM \"{}\" LIMIT 0", table.replace('"', "\"\""));
    let schema = lake.execute(&sql).await.map_err(lake_error)?.schema();
    let fields = encode::fields(&schema, &Format::UnifiedText);
    Ok(schema.fields().iter().cloned().zip(fields).collect())
}

/// Whether a schema pattern takes in `public`, the lake's one schema.
fn like_public(schema: Option<&str>) -> bool {
    schema.is_none_or(|pattern| matches_like(pattern, "public"))
}

fn oid_of(index: usize) -> u32 {
    FIRST_OID.saturating_add(u32::try_from(index).unwrap_or(u32::MAX))
}

fn table_of(tables: &[String], oid: u32) -> Option<&String> {
    let index = oid.checked_sub(FIRST_OID)?;
    tables.get(usize::try_from(index).ok()?)
}

/// The lake's tables in name order (their oids follow from it).
async fn tables(lake: &Arc<dyn LakeQuery>) -> PgWireResult<Vec<String>> {
    let batches = lake
        .query(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY table_name",
        )
        .await
        .map_err(lake_error)?;
    let mut names = Vec::new();
    for batch in &batches {
        let formatter =
            ArrayFormatter::try_new(batch.column(0).as_ref(), &FormatOptions::default())
                .map_err(|error| PgWireError::ApiError(Box::new(error)))?;
        names.extend((0..batch.num_rows()).map(|row| formatter.value(row).to_string()));
    }
    Ok(names)
}

/// What PostgreSQL's `format_type` prints for the types the lake's columns are sent as.
fn format_type(ty: &Type) -> &'static str {
    match *ty {
        Type::BOOL => "boolean",
        Type::INT2 => "smallint",
        Type::INT4 => "integer",
        Type::INT8 => "bigint",
        Type::FLOAT4 => "real",
        Type::FLOAT8 => "double precision",
        Type::BYTEA => "bytea",
        Type::DATE => "date",
        Type::TIMESTAMP => "timestamp without time zone",
        Type::TIMESTAMPTZ => "timestamp with time zone",
        Type::NUMERIC => "numeric",
        _ => "text",
    }
}

/// A row of TEXT values and NULLs.
fn row(values: &[Option<&str>]) -> DataRow {
    let mut buffer = BytesMut::new();
    for value in values {
        match value {
            Some(value) => {
                buffer.put_i32(value.len() as i32);
                buffer.put_slice(value.as_bytes());
            }
            None => buffer.put_i32(-1),
        }
    }
    DataRow::new(buffer, values.len() as i16)
}

/// Whether `name` matches psql's pattern: `^(…)$` around the name with `*` as `.*` and `?`
/// as `.`, other characters literal (psql escapes the regex ones with a backslash).
fn matches_pattern(pattern: &str, name: &str) -> bool {
    let inner = pattern
        .strip_prefix("^(")
        .and_then(|rest| rest.strip_suffix(")$"))
        .unwrap_or(pattern);
    let mut tokens = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' if chars.peek() == Some(&'*') => {
                chars.next();
                tokens.push(Token::AnyRun);
            }
            '.' => tokens.push(Token::Any),
            '\\' => tokens.extend(chars.next().map(Token::Literal)),
            other => tokens.push(Token::Literal(other)),
        }
    }
    let name: Vec<char> = name.chars().collect();
    matches_tokens(&tokens, &name)
}

/// Whether `name` matches a SQL `LIKE` pattern (`%`, `_`, backslash escapes), as pgjdbc
/// sends them.
fn matches_like(pattern: &str, name: &str) -> bool {
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => tokens.push(Token::AnyRun),
            '_' => tokens.push(Token::Any),
            '\\' => tokens.extend(chars.next().map(Token::Literal)),
            other => tokens.push(Token::Literal(other)),
        }
    }
    let name: Vec<char> = name.chars().collect();
    matches_tokens(&tokens, &name)
}

#[derive(Clone, Copy)]
enum Token {
    Literal(char),
    Any,
    AnyRun,
}

fn matches_tokens(tokens: &[Token], name: &[char]) -> bool {
    // One pass per token over the name's prefixes: linear in the pattern whatever it holds
    // (a backtracking match is exponential in the number of `%`, and the pattern is the
    // client's).
    let mut reachable = vec![false; name.len() + 1];
    reachable[0] = true;
    for token in tokens {
        let mut next = vec![false; name.len() + 1];
        match token {
            Token::AnyRun => {
                let mut seen = false;
                for (at, slot) in next.iter_mut().enumerate() {
                    seen |= reachable[at];
                    *slot = seen;
                }
            }
            Token::Any => next[1..].copy_from_slice(&reachable[..name.len()]),
            Token::Literal(c) => {
                for at in 1..=name.len() {
                    next[at] = reachable[at - 1] && name[at - 1] == *c;
                }
            }
        }
        reachable = next;
    }
    reachable[name.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOKUP: &str = "SELECT c.oid,\n  n.nspname,\n  c.relname\nFROM pg_catalog.pg_class c\n     \
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\nWHERE c.relname \
        OPERATOR(pg_catalog.~) '^(votes)$' COLLATE pg_catalog.default\n  AND \
        pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 2, 3;";

    #[test]
    fn recognises_psqls_describe_queries() {
        assert_eq!(
            recognise(LOOKUP),
            Some(CatalogQuery::Relations {
                pattern: "^(votes)$".to_owned()
            })
        );
        assert_eq!(
            recognise(
                "SELECT c.relchecks, c.relkind FROM pg_catalog.pg_class c WHERE c.oid = '16385';"
            ),
            Some(CatalogQuery::Relation { oid: 16385 })
        );
        assert_eq!(
            recognise(
                "SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = '16385' AND a.attnum > 0"
            ),
            Some(CatalogQuery::Attributes { oid: 16385 })
        );
        assert_eq!(
            recognise("SELECT pol.polname FROM pg_catalog.pg_policy pol WHERE pol.polrelid = '1'"),
            Some(CatalogQuery::Empty(6))
        );
        assert_eq!(recognise("SELECT * FROM votes"), None);
        assert_eq!(recognise("SELECT * FROM pg_catalog.pg_type"), None);
        // An oid that is not a number is not guessed at.
        assert_eq!(
            recognise("SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = 'x'"),
            None
        );
    }

    #[test]
    fn matches_psql_patterns() {
        assert!(matches_pattern("^(votes)$", "votes"));
        assert!(!matches_pattern("^(votes)$", "votes_hourly"));
        assert!(matches_pattern("^(vot.*)$", "votes_hourly"));
        assert!(matches_pattern("^(v.tes)$", "votes"));
        assert!(!matches_pattern("^(v.tes)$", "vtes"));
        assert!(matches_pattern("^(a\\.b)$", "a.b"));
        assert!(!matches_pattern("^(a\\.b)$", "axb"));
    }

    #[test]
    fn matches_like_patterns() {
        assert!(matches_like("votes", "votes"));
        assert!(matches_like("%", "votes"));
        assert!(matches_like("vo_es", "votes"));
        assert!(!matches_like("vo_es", "voes"));
        assert!(matches_like("tally\\_%", "tally_changes"));
        assert!(!matches_like("tally\\_%", "tallyxchanges"));
        assert!(!matches_like("votes", "votes_hourly"));
    }

    #[test]
    fn a_pattern_of_many_wildcards_is_answered_at_once() {
        let started = std::time::Instant::now();
        let pattern = format!("{}x", "%".repeat(10_000));
        assert!(!matches_like(
            &pattern,
            "tally_changes_and_more_of_a_long_name"
        ));
        let pattern = format!("^({}x)$", ".*".repeat(10_000));
        assert!(!matches_pattern(
            &pattern,
            "tally_changes_and_more_of_a_long_name"
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
