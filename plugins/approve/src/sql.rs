//! SQL rules, over PostgreSQL's tokens: comments are gone, string literals, dollar-quoted
//! bodies and quoted identifiers are single tokens, so `SELECT 'drop table t'`, `"DROP"` and
//! `/* DROP */` are not statements, while `delete/**/from t` and `SELECT 1; DROP TABLE t` are.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A rule that matched, by name, with what the user is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub rule: &'static str,
    pub reason: String,
}

impl Hit {
    /// A hit of built-in `rule` from `rules` (name, reason): the reason is the rule's.
    pub fn of(rules: &[(&'static str, &'static str)], rule: &'static str) -> Hit {
        let reason = rules
            .iter()
            .find(|(name, _)| *name == rule)
            .map_or(rule, |r| r.1);
        Hit {
            rule,
            reason: reason.into(),
        }
    }
}

/// The built-in SQL rules, in the order they are checked.
pub const RULES: &[(&str, &str)] = &[
    ("drop", "DROP statement"),
    ("truncate", "TRUNCATE statement"),
    ("alter", "ALTER statement"),
    ("grant", "GRANT or REVOKE statement"),
    ("delete-without-where", "DELETE without WHERE"),
    ("update-without-where", "UPDATE without WHERE"),
    (
        "do-block",
        "DO block (what it runs cannot be read before it runs)",
    ),
];

/// The keyword that starts a (sub)statement each rule is about. A query that contains none
/// of them, in any case, anywhere (even inside a literal), cannot match: see [`mentions`].
const VERBS: &[(&str, &str)] = &[
    ("DROP", "drop"),
    ("TRUNCATE", "truncate"),
    ("ALTER", "alter"),
    ("GRANT", "grant"),
    ("REVOKE", "grant"),
    ("DELETE", "delete-without-where"),
    ("UPDATE", "update-without-where"),
    ("DO", "do-block"),
];

/// The verbs of some rules, to tell quickly whether a query mentions any of them. When it
/// does not, no statement in it can match those rules, whatever it is or whether it can be
/// read at all: PostgreSQL's keywords are unquoted words, written out letter by letter. So
/// most queries (reads) are passed without being tokenized.
pub struct Verbs {
    list: Vec<&'static str>,
    /// For each byte, the verbs (bits into `list`) that begin with it, in either case.
    by_first: [u8; 256],
}

impl Verbs {
    pub fn of(rules: &[&str]) -> Verbs {
        let list: Vec<_> = VERBS
            .iter()
            .filter(|(_, rule)| rules.contains(rule))
            .map(|(verb, _)| *verb)
            .collect();
        let mut by_first = [0u8; 256];
        for (i, verb) in list.iter().enumerate() {
            let first = verb.as_bytes()[0];
            by_first[first as usize] |= 1 << i;
            by_first[first.to_ascii_lowercase() as usize] |= 1 << i;
        }
        Verbs { list, by_first }
    }

    /// The verbs as prescreen patterns: the same test as [`Verbs::mentioned_in`], run by the
    /// gateway natively.
    pub fn patterns(&self) -> Vec<String> {
        self.list.iter().map(|verb| format!("(?i){verb}")).collect()
    }

    /// Whether `sql` contains one of the verbs anywhere (ASCII case-insensitive).
    pub fn mentioned_in(&self, sql: &str) -> bool {
        let sql = sql.as_bytes();
        (0..sql.len()).any(|i| {
            let mut candidates = self.by_first[sql[i] as usize];
            while candidates != 0 {
                let verb = self.list[candidates.trailing_zeros() as usize].as_bytes();
                if sql[i..]
                    .get(..verb.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(verb))
                {
                    return true;
                }
                candidates &= candidates - 1;
            }
            false
        })
    }
}

/// One statement of a query: its tokens (no whitespace, no comments) and its normalized text
/// (literals as `?`, words as written, one space between tokens), which custom patterns see.
pub struct Statement {
    tokens: Vec<Token>,
    /// Each token as an upper-cased keyword, where it is an unquoted word.
    keywords: Vec<Option<String>>,
    pub normalized: String,
}

/// Splits `sql` into statements at top-level semicolons. `Err` when it cannot be read
/// (an unterminated literal or comment): the caller treats that as needing review.
pub fn statements(sql: &str) -> Result<Vec<Statement>, String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| e.message)?;
    let mut out = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        match token {
            Token::Whitespace(_) | Token::EOF => {}
            Token::SemiColon => {
                if !current.is_empty() {
                    out.push(Statement::new(std::mem::take(&mut current)));
                }
            }
            other => current.push(other),
        }
    }
    if !current.is_empty() {
        out.push(Statement::new(current));
    }
    Ok(out)
}

impl Statement {
    fn new(tokens: Vec<Token>) -> Statement {
        let normalized = tokens
            .iter()
            .map(|t| match t {
                Token::Word(w) if w.quote_style.is_none() => w.value.clone(),
                Token::Word(w) => format!("\"{}\"", w.value),
                t if is_literal(t) => "?".into(),
                t => t.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        let keywords = tokens
            .iter()
            .map(|t| match t {
                Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
                _ => None,
            })
            .collect();
        Statement {
            tokens,
            keywords,
            normalized,
        }
    }

    /// The built-in rules this statement matches.
    pub fn hits(&self) -> Vec<Hit> {
        let mut hits = Vec::new();
        for start in self.starts() {
            let Some(verb) = self.keyword(start) else {
                continue;
            };
            let Some(&(_, rule)) = VERBS.iter().find(|(v, _)| *v == verb) else {
                continue;
            };
            if matches!(verb, "DELETE" | "UPDATE") && self.has_where(start) {
                continue;
            }
            if !hits.iter().any(|h: &Hit| h.rule == rule) {
                hits.push(Hit::of(RULES, rule));
            }
        }
        hits
    }

    /// Where (sub)statements begin: the statement itself (after `EXPLAIN` and its options,
    /// which may run it), the body of every `AS (` (data-modifying `WITH` parts), and what
    /// follows `PREPARE name AS` or `CREATE RULE … DO`.
    fn starts(&self) -> Vec<usize> {
        let mut starts = vec![self.skip_explain(0)];
        for i in 1..self.tokens.len() {
            let previous = self.keyword(i - 1);
            let after_as_paren = self.tokens[i - 1] == Token::LParen
                && i >= 2
                && matches!(self.keyword(i - 2), Some("AS" | "MATERIALIZED"));
            let after_as = previous == Some("AS") && self.keyword(0) == Some("PREPARE");
            let rule_action = matches!(previous, Some("DO" | "ALSO" | "INSTEAD"))
                && self.keyword(0) == Some("CREATE");
            if after_as_paren || after_as || rule_action {
                starts.push(self.skip_explain(i));
            }
        }
        starts
    }

    /// `EXPLAIN [ANALYZE] [VERBOSE] (options)` before a statement.
    fn skip_explain(&self, mut i: usize) -> usize {
        if self.keyword(i) != Some("EXPLAIN") {
            return i;
        }
        i += 1;
        loop {
            match self.tokens.get(i) {
                Some(Token::LParen) => i = self.close(i) + 1,
                _ if matches!(self.keyword(i), Some("ANALYZE" | "VERBOSE")) => i += 1,
                _ => return i,
            }
        }
    }

    /// Whether the statement starting at `start` has a `WHERE` of its own (at its own
    /// nesting depth, before it ends at `)` or the end).
    fn has_where(&self, start: usize) -> bool {
        let mut depth = 0usize;
        for i in start..self.tokens.len() {
            match &self.tokens[i] {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => return false,
                Token::RParen => depth -= 1,
                _ if depth == 0 && self.keyword(i) == Some("WHERE") => return true,
                _ => {}
            }
        }
        false
    }

    /// The index of the `)` closing the `(` at `open` (or the end).
    fn close(&self, open: usize) -> usize {
        let mut depth = 0usize;
        for i in open..self.tokens.len() {
            match self.tokens[i] {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => {}
            }
        }
        self.tokens.len()
    }

    /// The unquoted word at `i`, upper-cased; quoted identifiers are never keywords.
    fn keyword(&self, i: usize) -> Option<&str> {
        self.keywords.get(i).and_then(|k| k.as_deref())
    }
}

fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sql: &str) -> Vec<&'static str> {
        statements(sql)
            .unwrap()
            .iter()
            .flat_map(|s| s.hits())
            .map(|h| h.rule)
            .collect()
    }

    #[test]
    fn finds_destructive_statements() {
        assert_eq!(rules("DROP TABLE t"), ["drop"]);
        assert_eq!(rules("drop table t"), ["drop"]);
        assert_eq!(rules("  /* hi */ Drop -- x\n TABLE t"), ["drop"]);
        assert_eq!(rules("TRUNCATE t"), ["truncate"]);
        assert_eq!(rules("ALTER TABLE t ADD c int"), ["alter"]);
        assert_eq!(rules("GRANT ALL ON t TO bob"), ["grant"]);
        assert_eq!(rules("revoke select on t from bob"), ["grant"]);
        assert_eq!(rules("DO $$ BEGIN EXECUTE 'x'; END $$"), ["do-block"]);
    }

    #[test]
    fn delete_and_update_need_a_where() {
        assert_eq!(rules("DELETE FROM t"), ["delete-without-where"]);
        assert_eq!(rules("delete/**/from t"), ["delete-without-where"]);
        assert!(rules("DELETE FROM t WHERE id = 1").is_empty());
        assert_eq!(rules("UPDATE t SET a = 1"), ["update-without-where"]);
        assert!(rules("UPDATE t SET a = 1 WHERE id = 2").is_empty());
        // A WHERE in a subquery is not the statement's own.
        assert_eq!(
            rules("UPDATE t SET a = (SELECT b FROM u WHERE u.id = 1)"),
            ["update-without-where"]
        );
        assert_eq!(
            rules("DELETE FROM t USING (SELECT 1 WHERE true) s"),
            ["delete-without-where"]
        );
    }

    #[test]
    fn several_statements_and_hidden_ones_are_all_seen() {
        assert_eq!(rules("SELECT 1; DROP TABLE t"), ["drop"]);
        assert_eq!(
            rules("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
            ["delete-without-where"]
        );
        assert!(rules("WITH d AS (DELETE FROM t WHERE a RETURNING *) SELECT 1").is_empty());
        assert_eq!(
            rules("EXPLAIN ANALYZE DELETE FROM t"),
            ["delete-without-where"]
        );
        assert_eq!(rules("EXPLAIN (ANALYZE, BUFFERS) DROP TABLE t"), ["drop"]);
        assert_eq!(
            rules("PREPARE p AS DELETE FROM t"),
            ["delete-without-where"]
        );
        assert_eq!(
            rules("CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u"),
            ["delete-without-where"]
        );
    }

    #[test]
    fn literals_identifiers_and_comments_do_not_fool_it() {
        assert!(rules("SELECT 'drop table t'").is_empty());
        assert!(rules("SELECT $$DROP TABLE t$$").is_empty());
        assert!(rules("SELECT E'it''s; DROP TABLE t'").is_empty());
        assert!(rules("SELECT \"drop\" FROM \"delete\"").is_empty());
        assert!(rules("SELECT 1 -- ; DROP TABLE t").is_empty());
        assert!(rules("SELECT 1 /* ; DROP /* nested */ TABLE t */").is_empty());
        assert!(rules("SELECT * FROM t FOR UPDATE").is_empty());
        assert!(rules("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 1").is_empty());
        assert!(rules("CREATE TABLE c (id int REFERENCES p ON DELETE CASCADE)").is_empty());
    }

    #[test]
    fn unreadable_sql_is_an_error() {
        assert!(statements("SELECT 'unterminated").is_err());
        assert!(statements("SELECT 1 /* open").is_err());
    }

    #[test]
    fn normalized_text_hides_literals() {
        let s = statements("select  *  from users where ssn = '123' ").unwrap();
        assert_eq!(s[0].normalized, "select * from users where ssn = ?");
    }
}
