//! Bound parameters (`$1`, `$2`, …) of the extended protocol, written into the statement as
//! SQL literals before it goes to the lake.
//!
//! Each value becomes a literal of its type and nothing else: text is quoted with every
//! quote doubled (the lake's parser, like PostgreSQL with `standard_conforming_strings`,
//! gives backslashes no meaning in `'…'`), numbers and booleans are parsed here and written
//! back from the parsed value inside a `CAST`, binary values are decoded by their type
//! first. A value that does not parse as its type is refused (22P02) before the lake sees
//! the statement, so a parameter can never add SQL.
//!
//! A parameter the client gave no type to (OID 0, as psycopg sends strings) is announced
//! as the type the lake infers from where it stands (`option = $1`: INT4, as PostgreSQL
//! does), so drivers that encode values by the announced type (tokio-postgres, asyncpg)
//! work; where nothing tells (`SELECT $1`) it is TEXT and written as a string literal,
//! which the lake compares with a column of another type as PostgreSQL compares an
//! unknown-typed literal.

use std::ops::Range;

use arrow_schema::DataType;
use pgwire::api::Type;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

use crate::statement;

/// The most parameters a statement may have (the protocol counts them in 16 bits).
pub(crate) const MAX_PARAMETERS: usize = u16::MAX as usize;

fn error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}

/// A statement's placeholders: each one's byte range and its parameter's index (0-based);
/// and how many parameters the statement takes (the highest `$n`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Placeholders {
    spans: Vec<(Range<usize>, usize)>,
    pub(crate) count: usize,
}

impl Placeholders {
    pub(crate) fn find(sql: &str) -> PgWireResult<Self> {
        let mut spans = Vec::new();
        let mut count = 0;
        for (range, text) in statement::placeholders(sql) {
            let number: usize = text[1..].parse().unwrap_or(0);
            if number == 0 || number > MAX_PARAMETERS {
                return Err(error("42P02", format!("there is no parameter {text}")));
            }
            count = count.max(number);
            spans.push((range, number - 1));
        }
        Ok(Self { spans, count })
    }

    /// `sql` with every placeholder replaced by its parameter's literal.
    pub(crate) fn substitute(&self, sql: &str, literals: &[String]) -> String {
        let mut out =
            String::with_capacity(sql.len() + literals.iter().map(String::len).sum::<usize>());
        let mut at = 0;
        for (range, index) in &self.spans {
            out.push_str(&sql[at..range.start]);
            // Parentheses keep `-$1` from becoming a `--` comment and `$1::int` binding to
            // the whole literal.
            out.push('(');
            out.push_str(&literals[*index]);
            out.push(')');
            at = range.end;
        }
        out.push_str(&sql[at..]);
        out
    }
}

/// The type a parameter is announced as: the client's, else the one the lake inferred,
/// else TEXT.
pub(crate) fn announced(declared: Option<&Type>, inferred: Option<&DataType>) -> Type {
    match (declared, inferred) {
        (Some(ty), _) if *ty != Type::UNKNOWN => ty.clone(),
        (_, Some(data_type)) => crate::encode::pg_type(data_type),
        _ => Type::TEXT,
    }
}

/// A NULL of the parameter's type, to learn a statement's columns before values are bound.
pub(crate) fn null_literal(ty: &Type) -> String {
    match sql_type(ty) {
        Some(name) => format!("CAST(NULL AS {name})"),
        None => "NULL".to_owned(),
    }
}

/// The lake's name of the types written as `CAST('…' AS <type>)`.
fn sql_type(ty: &Type) -> Option<&'static str> {
    Some(match *ty {
        Type::BOOL => "BOOLEAN",
        Type::INT2 => "SMALLINT",
        Type::INT4 | Type::OID => "INT",
        Type::INT8 => "BIGINT",
        Type::FLOAT4 => "REAL",
        Type::FLOAT8 => "DOUBLE",
        Type::NUMERIC => "DECIMAL(38, 10)",
        Type::DATE => "DATE",
        Type::TIMESTAMP | Type::TIMESTAMPTZ => "TIMESTAMP",
        _ => return None,
    })
}

fn quoted(text: &str) -> PgWireResult<String> {
    if text.contains('\0') {
        return Err(error(
            "22021",
            "invalid byte sequence for encoding \"UTF8\": 0x00".to_owned(),
        ));
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

fn invalid(ty: &Type, what: &str) -> PgWireError {
    error(
        "22P02",
        format!("invalid input syntax for type {}: {what}", ty.name()),
    )
}

/// The literal of one bound value: `value` in the text or binary format of `ty`.
pub(crate) fn literal(ty: &Type, value: Option<&[u8]>, binary: bool) -> PgWireResult<String> {
    let Some(value) = value else {
        return Ok(null_literal(ty));
    };
    if binary {
        return binary_literal(ty, value);
    }
    let text = std::str::from_utf8(value).map_err(|_| {
        error(
            "22021",
            "invalid byte sequence for encoding \"UTF8\"".to_owned(),
        )
    })?;
    let trimmed = text.trim();
    Ok(match *ty {
        Type::BOOL => match trimmed.to_ascii_lowercase().as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" => "TRUE".to_owned(),
            "f" | "false" | "n" | "no" | "off" | "0" => "FALSE".to_owned(),
            _ => return Err(invalid(ty, "not a boolean")),
        },
        Type::INT2 => integer::<i16>(ty, trimmed)?,
        Type::INT4 => integer::<i32>(ty, trimmed)?,
        Type::INT8 => integer::<i64>(ty, trimmed)?,
        Type::OID => integer::<u32>(ty, trimmed)?,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => number(ty, trimmed)?,
        Type::BYTEA => match trimmed.strip_prefix("\\x") {
            Some(hex) if hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                format!("X'{hex}'")
            }
            _ => return Err(invalid(ty, "bytea is taken in hex format (\\x…)")),
        },
        _ => quoted(text)?,
    })
}

fn integer<T: std::str::FromStr + std::fmt::Display>(
    ty: &Type,
    text: &str,
) -> PgWireResult<String> {
    let value: T = text.parse().map_err(|_| {
        invalid(
            ty,
            &format!("\"{}\"", text.chars().take(40).collect::<String>()),
        )
    })?;
    cast(ty, &value.to_string())
}

/// Finite decimals only: the text is checked digit by digit and written back as it is.
fn number(ty: &Type, text: &str) -> PgWireResult<String> {
    let lower = text.to_ascii_lowercase();
    match lower.as_str() {
        "nan" | "infinity" | "+infinity" | "-infinity" | "inf" | "-inf" => {
            return cast(ty, &lower);
        }
        _ => {}
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (unsigned, None),
    };
    let mantissa_ok = !mantissa.is_empty()
        && mantissa.bytes().filter(|&b| b == b'.').count() <= 1
        && mantissa.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && mantissa.bytes().any(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.strip_prefix(['-', '+']).unwrap_or(e);
        !digits.is_empty() && digits.len() <= 4 && digits.bytes().all(|b| b.is_ascii_digit())
    });
    if !mantissa_ok || !exponent_ok || text.len() > 1000 {
        return Err(invalid(ty, "not a number"));
    }
    cast(ty, text)
}

fn cast(ty: &Type, checked: &str) -> PgWireResult<String> {
    match sql_type(ty) {
        Some(name) => Ok(format!("CAST('{checked}' AS {name})")),
        None => quoted(checked),
    }
}

fn fixed<const N: usize>(ty: &Type, value: &[u8]) -> PgWireResult<[u8; N]> {
    value
        .try_into()
        .map_err(|_| invalid(ty, &format!("binary value of {} bytes", value.len())))
}

/// Days from 2000-01-01 (PostgreSQL's epoch) as a civil date (Howard Hinnant's algorithm).
fn civil(days_since_2000: i64) -> (i64, u32, u32) {
    let z = days_since_2000 + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn binary_literal(ty: &Type, value: &[u8]) -> PgWireResult<String> {
    Ok(match *ty {
        Type::BOOL => match value {
            [0] => "FALSE".to_owned(),
            [_] => "TRUE".to_owned(),
            _ => return Err(invalid(ty, "binary boolean of the wrong size")),
        },
        Type::INT2 => cast(ty, &i16::from_be_bytes(fixed(ty, value)?).to_string())?,
        Type::INT4 => cast(ty, &i32::from_be_bytes(fixed(ty, value)?).to_string())?,
        Type::INT8 => cast(ty, &i64::from_be_bytes(fixed(ty, value)?).to_string())?,
        Type::OID => cast(ty, &u32::from_be_bytes(fixed(ty, value)?).to_string())?,
        Type::FLOAT4 => float(ty, f64::from(f32::from_be_bytes(fixed(ty, value)?)))?,
        Type::FLOAT8 => float(ty, f64::from_be_bytes(fixed(ty, value)?))?,
        Type::NUMERIC => cast(
            ty,
            &numeric_text(value).ok_or_else(|| invalid(ty, "binary numeric"))?,
        )?,
        Type::BYTEA => {
            let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
            format!("X'{hex}'")
        }
        Type::UUID => {
            let b: [u8; 16] = fixed(ty, value)?;
            let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "'{}-{}-{}-{}-{}'",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
        Type::DATE => {
            let (y, m, d) = civil(i64::from(i32::from_be_bytes(fixed(ty, value)?)));
            format!("CAST('{y:04}-{m:02}-{d:02}' AS DATE)")
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(fixed(ty, value)?);
            let days = micros.div_euclid(86_400_000_000);
            let rest = micros.rem_euclid(86_400_000_000);
            let (y, m, d) = civil(days);
            let (s, us) = (rest / 1_000_000, rest % 1_000_000);
            format!(
                "'{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}Z'",
                s / 3600,
                s / 60 % 60,
                s % 60
            )
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            let text = std::str::from_utf8(value).map_err(|_| {
                error(
                    "22021",
                    "invalid byte sequence for encoding \"UTF8\"".to_owned(),
                )
            })?;
            quoted(text)?
        }
        _ => {
            return Err(error(
                "0A000",
                format!(
                    "binary parameters of type {} are not supported: send it as text",
                    ty.name()
                ),
            ));
        }
    })
}

fn float(ty: &Type, value: f64) -> PgWireResult<String> {
    if value.is_nan() {
        return cast(ty, "NaN");
    }
    if value.is_infinite() {
        return cast(ty, if value > 0.0 { "Infinity" } else { "-Infinity" });
    }
    cast(ty, &format!("{value:?}"))
}

/// PostgreSQL's binary NUMERIC (base-10000 digits, weight, sign, scale) as decimal text.
fn numeric_text(value: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<i16> {
        Some(i16::from_be_bytes(
            value.get(i * 2..i * 2 + 2)?.try_into().ok()?,
        ))
    };
    let (ndigits, weight, sign, scale) = (word(0)?, word(1)?, word(2)? as u16, word(3)?);
    if ndigits < 0 || scale < 0 || value.len() != 8 + 2 * ndigits as usize {
        return None;
    }
    match sign {
        0xC000 => return Some("NaN".to_owned()),
        0xD000 => return Some("Infinity".to_owned()),
        0xF000 => return Some("-Infinity".to_owned()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<i16> = (0..ndigits as usize)
        .map(|i| word(4 + i))
        .collect::<Option<_>>()?;
    if digits.iter().any(|d| !(0..10_000).contains(d)) || weight.unsigned_abs() > 1000 {
        return None;
    }
    let mut integer = String::new();
    for position in 0..=weight.max(-1) {
        let digit = digits.get(position as usize).copied().unwrap_or(0);
        if integer.is_empty() {
            integer = digit.to_string();
        } else {
            integer.push_str(&format!("{digit:04}"));
        }
    }
    if integer.is_empty() {
        integer.push('0');
    }
    let mut fraction = String::new();
    let mut position = i32::from(weight) + 1;
    while fraction.len() < scale as usize {
        let digit = if position < 0 {
            0
        } else {
            digits.get(position as usize).copied().unwrap_or(0)
        };
        fraction.push_str(&format!("{digit:04}"));
        position += 1;
    }
    fraction.truncate(scale as usize);
    let sign = if sign == 0x4000 { "-" } else { "" };
    Some(match fraction.is_empty() {
        true => format!("{sign}{integer}"),
        false => format!("{sign}{integer}.{fraction}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_become_literals_that_cannot_add_sql() {
        assert_eq!(
            literal(&Type::TEXT, Some(b"x' OR '1'='1"), false).unwrap(),
            "'x'' OR ''1''=''1'"
        );
        assert_eq!(
            literal(&Type::TEXT, Some(b"a\\'b"), false).unwrap(),
            "'a\\''b'"
        );
        assert!(literal(&Type::TEXT, Some(b"a\0b"), false).is_err());
        assert!(literal(&Type::INT4, Some(b"1; DROP TABLE votes"), false).is_err());
        assert!(literal(&Type::FLOAT8, Some(b"1') OR (1"), false).is_err());
        assert!(literal(&Type::BYTEA, Some(b"\\x0g"), false).is_err());
        assert_eq!(
            literal(&Type::INT8, Some(b" 42 "), false).unwrap(),
            "CAST('42' AS BIGINT)"
        );
        assert_eq!(
            literal(&Type::FLOAT8, Some(b"-1.5e3"), false).unwrap(),
            "CAST('-1.5e3' AS DOUBLE)"
        );
        assert_eq!(literal(&Type::BOOL, Some(b"t"), false).unwrap(), "TRUE");
        assert_eq!(
            literal(&Type::INT4, None, false).unwrap(),
            "CAST(NULL AS INT)"
        );
    }

    #[test]
    fn binary_values_decode_by_type() {
        assert_eq!(
            literal(&Type::INT4, Some(&7i32.to_be_bytes()), true).unwrap(),
            "CAST('7' AS INT)"
        );
        assert!(literal(&Type::INT4, Some(&[1, 2]), true).is_err());
        assert_eq!(
            literal(&Type::DATE, Some(&0i32.to_be_bytes()), true).unwrap(),
            "CAST('2000-01-01' AS DATE)"
        );
        assert_eq!(
            literal(&Type::TIMESTAMPTZ, Some(&(-1i64).to_be_bytes()), true).unwrap(),
            "'1999-12-31T23:59:59.999999Z'"
        );
        assert_eq!(
            literal(&Type::UUID, Some(&[0xab; 16]), true).unwrap(),
            "'abababab-abab-abab-abab-abababababab'"
        );
        // 12.5 = digits [12, 5000], weight 0, positive, scale 1.
        let mut numeric = Vec::new();
        for word in [2i16, 0, 0, 1, 12, 5000] {
            numeric.extend_from_slice(&word.to_be_bytes());
        }
        assert_eq!(
            literal(&Type::NUMERIC, Some(&numeric), true).unwrap(),
            "CAST('12.5' AS DECIMAL(38, 10))"
        );
        // 0.0001 = digits [1], weight -1, scale 4.
        let mut small = Vec::new();
        for word in [1i16, -1, 0, 4, 1] {
            small.extend_from_slice(&word.to_be_bytes());
        }
        assert_eq!(numeric_text(&small).unwrap(), "0.0001");
    }

    #[test]
    fn placeholders_are_replaced_in_place() {
        let sql = "SELECT $2, '$1' FROM t WHERE a = -$1";
        let found = Placeholders::find(sql).unwrap();
        assert_eq!(found.count, 2);
        assert_eq!(
            found.substitute(sql, &["1".to_owned(), "'x'".to_owned()]),
            "SELECT ('x'), '$1' FROM t WHERE a = -(1)"
        );
        assert!(Placeholders::find("SELECT $0").is_err());
        assert!(Placeholders::find("SELECT $99999999999999999999").is_err());
    }
}
