//! How each list query runs, on both databases: an index range, never a scan of the table
//! or a sort of everything that matches (the API's pages stay fast at millions of runs).

#[path = "../../tests/support/pg.rs"]
mod pg;

use sqlx::Row;
use weir_types::{FlowRunId, State};

use super::events::LOGS_QUERY;
use super::flow_runs::{list_flow_runs_query, tags_query};
use super::query::{Query, cursor_of};
use super::task_runs::list_task_runs_query;
use super::{Db, FlowRunFilter, Kind};

/// One list query: what it is, whether it is a page in `created_at` order that must come
/// straight off an index (no sort), and whether it continues from a cursor (an index range).
struct Case {
    name: &'static str,
    query: Query,
    sql: String,
    paged: bool,
    cursor: bool,
    /// The index a lookup (not a page) must search.
    index: Option<&'static str>,
}

/// The cases, about `run`: a flow run with many task runs and log lines.
fn cases(run: FlowRunId) -> Vec<Case> {
    let cursor = || Some(cursor_of(1_700_000_000_000_000, &FlowRunId::new().to_string()));
    let flows = |name, f: FlowRunFilter| {
        let cursor = f.cursor.is_some();
        let (query, sql, _) = list_flow_runs_query(FlowRunFilter { limit: 50, ..f }).unwrap();
        Case {
            name,
            query,
            sql,
            paged: true,
            cursor,
            index: None,
        }
    };
    let tasks = |name, flow_run, state, cursor: Option<String>| {
        let has_cursor = cursor.is_some();
        let (query, sql, _) = list_task_runs_query(flow_run, state, 50, cursor).unwrap();
        Case {
            name,
            query,
            sql,
            paged: true,
            cursor: has_cursor,
            index: None,
        }
    };
    let with = |args: &[&str], ints: &[i64]| {
        let mut q = Query::new();
        for a in args {
            q.text(|n| format!("${n}"), a.to_string());
        }
        for i in ints {
            q.int(|n| format!("${n}"), *i);
        }
        q
    };
    let state = || Some(State::Running);
    vec![
        flows("flow runs", FlowRunFilter::default()),
        flows(
            "flow runs, page 2",
            FlowRunFilter {
                cursor: cursor(),
                ..Default::default()
            },
        ),
        flows(
            "flow runs by state",
            FlowRunFilter {
                state: state(),
                ..Default::default()
            },
        ),
        flows(
            "flow runs by state, page 2",
            FlowRunFilter {
                state: state(),
                cursor: cursor(),
                ..Default::default()
            },
        ),
        flows(
            "flow runs by flow",
            FlowRunFilter {
                flow: Some("etl".into()),
                ..Default::default()
            },
        ),
        flows(
            "flow runs by flow, page 2",
            FlowRunFilter {
                flow: Some("etl".into()),
                cursor: cursor(),
                ..Default::default()
            },
        ),
        flows(
            "flow runs by tag",
            FlowRunFilter {
                tag: Some("nightly".into()),
                ..Default::default()
            },
        ),
        flows(
            "flow runs by tag, page 2",
            FlowRunFilter {
                tag: Some("nightly".into()),
                cursor: cursor(),
                ..Default::default()
            },
        ),
        flows(
            "flow runs created after",
            FlowRunFilter {
                created_after: Some(1),
                ..Default::default()
            },
        ),
        tasks("task runs", None, None, None),
        tasks("task runs, page 2", None, None, cursor()),
        tasks("task runs by state", None, state(), None),
        tasks("task runs by state, page 2", None, state(), cursor()),
        tasks("task runs of a flow run", Some(run), None, None),
        tasks("task runs of a flow run, page 2", Some(run), None, cursor()),
        Case {
            name: "tags of a page of flow runs",
            query: with(&[&run.to_string(), &FlowRunId::new().to_string()], &[]),
            sql: tags_query(2),
            paged: false,
            cursor: false,
            index: Some("flow_run_tags_by_run"),
        },
        Case {
            // A typical run, with a few lines among many runs'. (For one holding a large
            // share of all lines, PostgreSQL may rightly walk `seq` in order and filter.)
            name: "logs of a flow run",
            query: with(&["r7"], &[0, 1000]),
            sql: LOGS_QUERY.to_string(),
            paged: false,
            cursor: false,
            index: Some("logs_by_flow_run"),
        },
    ]
}

/// A case's plan, as text lines.
struct Plan {
    name: &'static str,
    paged: bool,
    cursor: bool,
    index: Option<&'static str>,
    lines: Vec<String>,
}

async fn plans(db: &Db, run: FlowRunId) -> Vec<Plan> {
    let mut conn = db.pool.acquire().await.unwrap();
    if db.kind == Kind::Postgres {
        // The tables are small: without this, reading them whole is rightly the cheapest plan.
        // With it, a sequential scan is only chosen where no index can serve the query.
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let (prefix, column) = match db.kind {
        Kind::Sqlite => ("EXPLAIN QUERY PLAN ", 3),
        Kind::Postgres => ("EXPLAIN ", 0),
    };
    let mut out = Vec::new();
    for Case {
        name,
        query,
        sql,
        paged,
        cursor,
        index,
    } in cases(run)
    {
        let lines = query
            .fetch_on(&mut *conn, format!("{prefix}{sql}"))
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>(column).unwrap())
            .collect();
        out.push(Plan {
            name,
            paged,
            cursor,
            index,
            lines,
        });
    }
    out
}

/// What is wrong with a plan: a scan of a whole table, a sort of a page's whole match, a
/// cursor that is not an index range.
fn faults(kind: Kind, plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for line in &plan.lines {
        let l = line.trim();
        let full_scan = match kind {
            // `SCAN t USING INDEX i` walks an index in order and stops at the page's end.
            Kind::Sqlite => l.starts_with("SCAN ") && !l.contains(" USING "),
            Kind::Postgres => l.contains("Seq Scan"),
        };
        if full_scan {
            out.push(format!("a full scan: {l}"));
        }
        let sort = match kind {
            Kind::Sqlite => l.contains("TEMP B-TREE"),
            Kind::Postgres => l.starts_with("Sort") || l.contains("->  Sort"),
        };
        if plan.paged && sort {
            out.push(format!("a sort of every match: {l}"));
        }
    }
    if let Some(index) = plan.index
        && !plan
            .lines
            .iter()
            .any(|l| l.contains(index) && !l.trim_start().starts_with("SCAN "))
    {
        out.push(format!("does not search {index}"));
    }
    if plan.cursor {
        let range = plan.lines.iter().any(|l| match kind {
            Kind::Sqlite => l.contains("SEARCH") && l.contains("(created_at,id)<(?,?)"),
            Kind::Postgres => l.contains("Index Cond") && l.contains("ROW(created_at, id) <"),
        });
        if !range {
            out.push("the cursor is not an index range".into());
        }
    }
    out
}

/// Enough rows that the planner's choices are the ones it makes in use (PostgreSQL plans an
/// empty table as if reading it whole cost nothing), then statistics on them. A tenth of the
/// task runs and log lines are `big`'s: a large flow run (where a sort would hurt), but not
/// so large that walking everything in order and filtering is the better plan.
async fn fill(db: &Db, big: FlowRunId) {
    const ROWS: i64 = 20_000;
    let numbers = format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})");
    let state = "CASE i % 4 WHEN 0 THEN 'Completed' WHEN 1 THEN 'Running' WHEN 2 THEN 'Failed' ELSE 'Pending' END";
    for sql in [
        format!(
            "{numbers} INSERT INTO flow_runs (id, flow_name, flow_path, state, parameters, created_at, hostname, pid) \
             SELECT 'r' || i, 'flow' || (i % 20), 'app::flow', {state}, '{{}}', i, 'h', 1 FROM n"
        ),
        format!("{numbers} INSERT INTO flow_run_tags (flow_run_id, tag) SELECT 'r' || i, 'all' FROM n"),
        format!(
            "{numbers} INSERT INTO flow_run_tags (flow_run_id, tag) SELECT 'r' || i, 'nightly' FROM n WHERE i % 5 = 0"
        ),
        format!(
            "{numbers} INSERT INTO task_runs (id, flow_run_id, task_name, task_path, state, attempt, cache_status, \
             created_at, history) SELECT 't' || i, CASE i % 10 WHEN 0 THEN '{big}' ELSE 'r' || (i % 2000) END, 'task', 'app::task', {state}, 1, 'miss', i, '[]' FROM n"
        ),
        format!(
            "{numbers} INSERT INTO logs (dedupe, flow_run_id, at, level, target, message) \
             SELECT 'd' || i, CASE i % 10 WHEN 0 THEN '{big}' ELSE 'r' || (i % 2000) END, i, 'INFO', 'app', 'line' FROM n"
        ),
        "ANALYZE".to_string(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&db.pool).await.unwrap();
    }
}

async fn check(db: &Db) {
    let big = FlowRunId::new();
    fill(db, big).await;
    let mut bad = Vec::new();
    for plan in plans(db, big).await {
        let f = faults(db.kind, &plan);
        if !f.is_empty() {
            bad.push(format!(
                "{}: {}\n    {}",
                plan.name,
                f.join("; "),
                plan.lines.join("\n    ")
            ));
        }
    }
    assert!(bad.is_empty(), "{:?}: \n{}", db.kind, bad.join("\n"));
}

#[tokio::test]
async fn every_list_query_is_an_index_range_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("plans.db").display()))
        .await
        .unwrap();
    check(&db).await;
}

#[tokio::test]
async fn every_list_query_is_an_index_range_on_postgres() {
    let Some(pg) = pg::Pg::start() else { return };
    let db = Db::connect(&pg.url()).await.unwrap();
    check(&db).await;
}
