//! List queries built from optional filters, page cursors, and row decoding.

use std::str::FromStr;

use sqlx::AnyPool;
use sqlx::any::AnyRow;

use super::DbError;

pub(super) fn bad_row(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

pub(super) fn parse<T: FromStr>(s: String) -> Result<T, sqlx::Error>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(bad_row)
}

pub(super) fn opt<T: FromStr>(s: Option<String>) -> Result<Option<T>, sqlx::Error>
where
    T::Err: std::fmt::Display,
{
    s.map(parse).transpose()
}

/// A page cursor: the sort key of the last item, `created_at:id`.
pub(super) fn cursor_of(created_at: i64, id: &str) -> String {
    format!("{created_at}:{id}")
}

pub(super) fn parse_cursor(c: &str) -> Result<(i64, String), DbError> {
    let bad = || DbError::Invalid {
        message: format!("'{c}' is not a cursor from a previous page"),
        field: "cursor",
    };
    let (t, id) = c.split_once(':').ok_or_else(bad)?;
    // Exactly the documented form, `-?[0-9]{1,19}`; a time beyond i64 (only a hand-made
    // cursor has one) means "before everything" or "after everything".
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let t: i128 = t.parse().map_err(|_| bad())?;
    let t = t.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
    uuid_like(id).then_some((t, id.to_string())).ok_or_else(bad)
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// A list query under construction: conditions with `$n` parameters in order.
pub(super) struct Query {
    conds: Vec<String>,
    args: Vec<Arg>,
}

enum Arg {
    Text(String),
    Int(i64),
}

impl Query {
    pub(super) fn new() -> Query {
        Query {
            conds: Vec::new(),
            args: Vec::new(),
        }
    }
    fn next(&self) -> usize {
        self.args.len() + 1
    }
    pub(super) fn text(&mut self, cond: impl FnOnce(usize) -> String, v: String) {
        let n = self.next();
        self.conds.push(cond(n));
        self.args.push(Arg::Text(v));
    }
    pub(super) fn int(&mut self, cond: impl FnOnce(usize) -> String, v: i64) {
        let n = self.next();
        self.conds.push(cond(n));
        self.args.push(Arg::Int(v));
    }
    pub(super) fn cursor(&mut self, c: (i64, String)) {
        let n = self.next();
        // A row value: both databases turn it into one index range, where the OR form
        // made them scan.
        self.conds.push(format!("(created_at, id) < (${n}, ${})", n + 1));
        self.args.push(Arg::Int(c.0));
        self.args.push(Arg::Text(c.1));
    }
    pub(super) fn where_clause(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conds.join(" AND "))
        }
    }
    pub(super) async fn fetch(self, pool: &AnyPool, sql: String) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in self.args {
            q = match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            };
        }
        q.fetch_all(pool).await
    }
}
