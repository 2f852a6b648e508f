//! Just enough SQL lexing to split a simple-protocol query string into statements and to
//! recognise the session commands clients send, which the lake does not run.
//!
//! The lake's parser (DataFusion) takes one statement at a time and refuses `SET`, so the
//! string is cut here at the semicolons that are outside quotes, comments and dollar-quoted
//! bodies; everything else is left to the lake.

/// What a statement asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Runs on the lake.
    Lake,
    /// `SET`, `RESET`, `DISCARD`…: accepted and ignored, answered with this tag.
    Ignored(&'static str),
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` / `ABORT`.
    Rollback,
    /// `SHOW <parameter>` of a PostgreSQL parameter this server answers itself.
    Show { name: String, value: &'static str },
    /// `SHOW` of a parameter nobody knows.
    ShowUnknown(String),
    /// `COPY`: refused, the lake is read-only here and there is no COPY support.
    Copy,
    /// One of psql's `\d` catalog queries, answered from the lake's schemas.
    Catalog(crate::catalog::CatalogQuery),
}

/// The session parameters `SHOW` answers, as PostgreSQL names them (lower case).
const PARAMETERS: &[(&str, &str)] = &[
    ("server_version", crate::SERVER_VERSION),
    ("server_version_num", "150000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("intervalstyle", "postgres"),
    ("timezone", "UTC"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
    ("search_path", "public"),
    ("max_identifier_length", "63"),
    ("is_superuser", "off"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("application_name", ""),
];

/// `SHOW` forms DataFusion answers from its information schema.
const LAKE_SHOW: &[&str] = &["tables", "columns", "all", "functions"];

/// Splits a query string into its statements, without the separating semicolons and with
/// surrounding whitespace trimmed; statements that are empty (`;;`) are dropped.
pub(crate) fn split(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut lexer = Lexer::new(sql);
    while let Some(token) = lexer.next_token() {
        if let Token::Semicolon(at) = token {
            push_trimmed(&mut out, &sql[start..at]);
            start = at + 1;
        }
    }
    push_trimmed(&mut out, &sql[start..]);
    out
}

fn push_trimmed<'a>(out: &mut Vec<&'a str>, piece: &'a str) {
    // A piece of only comments is no statement either (PostgreSQL answers it as empty).
    if Lexer::new(piece).words().next().is_some() {
        out.push(piece.trim());
    }
}

/// The `$n` parameter placeholders outside quotes and comments: where each is in `sql`
/// (a byte range) and its text.
pub(crate) fn placeholders(sql: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut out = Vec::new();
    let mut lexer = Lexer::new(sql);
    while let Some(token) = lexer.next_token() {
        if let Token::Placeholder(text) = token {
            out.push((lexer.at - text.len()..lexer.at, text));
        }
    }
    out
}

/// Sorts one statement (as [`split`] returns them).
pub(crate) fn classify(statement: &str) -> Command {
    let words: Vec<String> = Lexer::new(statement)
        .words()
        .take(4)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match word(0) {
        "set" => Command::Ignored("SET"),
        "reset" => Command::Ignored("RESET"),
        "discard" => Command::Ignored("DISCARD ALL"),
        "begin" => Command::Begin,
        "start" if word(1) == "transaction" => Command::Begin,
        "commit" | "end" => Command::Commit,
        "rollback" | "abort" => Command::Rollback,
        "copy" => Command::Copy,
        "show" => show(statement),
        "select" => crate::catalog::recognise(statement).map_or(Command::Lake, Command::Catalog),
        _ => Command::Lake,
    }
}

fn show(statement: &str) -> Command {
    let mut lexer = Lexer::new(statement);
    // Skips the `SHOW` keyword; what follows is the parameter, possibly dotted or quoted.
    let _ = lexer.next_word();
    let rest = statement[lexer.at..].trim().to_ascii_lowercase();
    let rest = rest.split_whitespace().collect::<Vec<_>>().join(" ");
    let name = match rest.as_str() {
        "transaction isolation level" => "transaction_isolation".to_owned(),
        other => other.trim_matches('"').to_owned(),
    };
    let first = name.split(' ').next().unwrap_or("");
    if LAKE_SHOW.contains(&first) || name.starts_with("datafusion.") {
        return Command::Lake;
    }
    match PARAMETERS.iter().find(|(known, _)| *known == name) {
        Some((_, value)) => Command::Show { name, value },
        None => Command::ShowUnknown(name),
    }
}

enum Token<'a> {
    Word(&'a str),
    Semicolon(usize),
    Placeholder(&'a str),
    Other,
}

/// A byte-level scanner over PostgreSQL's lexical rules for quotes and comments. All the
/// delimiters it looks for are ASCII, so slicing at their positions stays on char boundaries.
struct Lexer<'a> {
    sql: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            sql,
            bytes: sql.as_bytes(),
            at: 0,
        }
    }

    fn words(mut self) -> impl Iterator<Item = &'a str> {
        std::iter::from_fn(move || self.next_word())
    }

    fn next_word(&mut self) -> Option<&'a str> {
        loop {
            if let Token::Word(word) = self.next_token()? {
                return Some(word);
            }
        }
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.at + offset).copied()
    }

    fn next_token(&mut self) -> Option<Token<'a>> {
        loop {
            let byte = self.peek(0)?;
            let start = self.at;
            match byte {
                b if b.is_ascii_whitespace() => self.at += 1,
                b'-' if self.peek(1) == Some(b'-') => {
                    while self.peek(0).is_some_and(|b| b != b'\n') {
                        self.at += 1;
                    }
                }
                b'/' if self.peek(1) == Some(b'*') => self.block_comment(),
                b';' => {
                    self.at += 1;
                    return Some(Token::Semicolon(start));
                }
                b'\'' => {
                    self.quoted(b'\'', false);
                    return Some(Token::Other);
                }
                b'"' => {
                    self.quoted(b'"', false);
                    return Some(Token::Other);
                }
                b'e' | b'E' if self.peek(1) == Some(b'\'') => {
                    self.at += 1;
                    self.quoted(b'\'', true);
                    return Some(Token::Other);
                }
                b'$' => return Some(self.dollar()),
                b if is_ident_start(b) => {
                    while self.peek(0).is_some_and(is_ident_char) {
                        self.at += 1;
                    }
                    return Some(Token::Word(&self.sql[start..self.at]));
                }
                _ => {
                    self.at += 1;
                    return Some(Token::Other);
                }
            }
        }
    }

    /// Block comments nest in PostgreSQL.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(byte) = self.peek(0) {
            if byte == b'/' && self.peek(1) == Some(b'*') {
                depth += 1;
                self.at += 2;
            } else if byte == b'*' && self.peek(1) == Some(b'/') {
                depth -= 1;
                self.at += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.at += 1;
            }
        }
    }

    /// A quoted string or identifier; a doubled quote is a quote, and in `E'…'` strings a
    /// backslash escapes the next character.
    fn quoted(&mut self, quote: u8, backslash_escapes: bool) {
        self.at += 1;
        while let Some(byte) = self.peek(0) {
            self.at += 1;
            if backslash_escapes && byte == b'\\' {
                self.at += 1;
            } else if byte == quote {
                if self.peek(0) == Some(quote) {
                    self.at += 1;
                } else {
                    return;
                }
            }
        }
    }

    /// `$1` (a parameter), `$tag$…$tag$` / `$$…$$` (a dollar-quoted string), or a lone `$`.
    fn dollar(&mut self) -> Token<'a> {
        let start = self.at;
        self.at += 1;
        if self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
            while self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
                self.at += 1;
            }
            return Token::Placeholder(&self.sql[start..self.at]);
        }
        let mut end = self.at;
        while self
            .bytes
            .get(end)
            .is_some_and(|&b| is_ident_start(b) || b.is_ascii_digit())
        {
            end += 1;
        }
        if self.bytes.get(end) != Some(&b'$') {
            return Token::Other;
        }
        let tag = &self.sql[start..=end];
        self.at = end + 1;
        match self.sql[self.at..].find(tag) {
            Some(close) => self.at += close + tag.len(),
            None => self.at = self.bytes.len(),
        }
        Token::Other
    }
}

fn is_ident_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_' || byte >= 0x80
}

fn is_ident_char(byte: u8) -> bool {
    is_ident_start(byte) || byte.is_ascii_digit() || byte == b'$'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_semicolons_outside_quotes_and_comments() {
        let sql = "SELECT 'a;b', \"c;d\" FROM t; -- x; y\n SELECT $$;$$ /* ; /* ; */ ; */;;  SELECT E'\\';'";
        assert_eq!(
            split(sql),
            vec![
                "SELECT 'a;b', \"c;d\" FROM t",
                "-- x; y\n SELECT $$;$$ /* ; /* ; */ ; */",
                "SELECT E'\\';'",
            ]
        );
        assert!(split("  ; ;\n").is_empty());
        assert!(split("-- only a comment").is_empty());
    }

    #[test]
    fn finds_placeholders_but_not_dollar_quotes() {
        assert_eq!(
            placeholders("SELECT * FROM votes WHERE option = $1 OR option = $12"),
            vec![(35..37, "$1"), (50..53, "$12")]
        );
        assert!(placeholders("SELECT '$1', $tag$ $2 $tag$, \"$3\" -- $4").is_empty());
    }

    #[test]
    fn classifies_session_commands() {
        assert_eq!(
            classify("set extra_float_digits = 3"),
            Command::Ignored("SET")
        );
        assert_eq!(classify("/* hi */ BEGIN"), Command::Begin);
        assert_eq!(classify("start transaction read only"), Command::Begin);
        assert_eq!(classify("COMMIT"), Command::Commit);
        assert_eq!(classify("rollback"), Command::Rollback);
        assert_eq!(classify("copy votes to stdout"), Command::Copy);
        assert_eq!(
            classify("SHOW TRANSACTION ISOLATION LEVEL"),
            Command::Show {
                name: "transaction_isolation".into(),
                value: "read committed"
            }
        );
        assert_eq!(
            classify("show nope"),
            Command::ShowUnknown("nope".to_owned())
        );
        assert_eq!(classify("SHOW TABLES"), Command::Lake);
        assert_eq!(classify("SHOW COLUMNS FROM votes"), Command::Lake);
        assert_eq!(
            classify("show datafusion.execution.batch_size"),
            Command::Lake
        );
        assert_eq!(
            classify("SHOW \"DateStyle\""),
            Command::Show {
                name: "datestyle".into(),
                value: "ISO, MDY"
            }
        );
        assert_eq!(classify("select 1"), Command::Lake);
        assert_eq!(classify("settle"), Command::Lake);
    }
}
