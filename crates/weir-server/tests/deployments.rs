//! Deployments, schedules, claims and workers against a real server on real databases
//! (SQLite files; a throwaway PostgreSQL 15 cluster, one database per scenario).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_server::scheduler::{self, Options};

#[path = "support/pg.rs"]
mod pg;
use pg::Pg;

/// A server on 127.0.0.1:0 serving `url`, with its own scheduler; stopped when dropped.
struct Server {
    base: String,
    db: weir_server::Db,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(url: &str, opts: Options) -> Server {
        let db = weir_server::Db::connect(url).await.unwrap();
        let cfg = weir_server::ServerConfig {
            database_url: url.to_string(),
            scheduler: opts,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        let done = tokio::spawn(async move {
            weir_server::serve_until(
                cfg,
                "127.0.0.1:0".parse().unwrap(),
                false,
                move |a| {
                    let _ = addr_tx.send(a);
                },
                async move {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
        });
        let addr = addr_rx.await.unwrap();
        Server {
            base: format!("http://{addr}/api/v1"),
            db,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// Stops it and waits until it stopped (its scheduler too).
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            d.await.unwrap();
        }
    }
}

/// A fresh database: an SQLite file, or the (per-test) PostgreSQL cluster's.
fn fresh_db(pg: Option<&Pg>, dir: &tempfile::TempDir) -> String {
    match pg {
        None => format!("sqlite://{}", dir.path().join("t.db").display()),
        Some(pg) => pg.url(),
    }
}

fn fast() -> Options {
    Options {
        heartbeat_timeout: Duration::from_secs(15),
        late_after: Duration::from_secs(30),
        tick: Duration::from_millis(100),
    }
}

fn spec(name: &str, extra: Value) -> Value {
    let mut s = json!({
        "name": name, "flow": format!("flow_{name}"), "entrypoint": ["./flows", "run", name],
        "parameters": {"n": 1},
        "parameter_schema": {"type": "object", "properties": {"n": {"type": "integer"}, "who": {"type": "string"}},
            "required": ["n"]},
        "source": {"type": "local", "path": "."}, "work_pool": format!("pool_{name}")
    });
    if let (Some(s), Some(e)) = (s.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    s
}

async fn send(c: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (StatusCode, Value) {
    let mut r = c.request(method, url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    send(c, reqwest::Method::POST, url, Some(body)).await
}

async fn get(c: &reqwest::Client, url: String) -> (StatusCode, Value) {
    send(c, reqwest::Method::GET, url, None).await
}

async fn deploy(c: &reqwest::Client, base: &str, s: Value) {
    let name = s["name"].as_str().unwrap().to_string();
    let (st, body) = send(c, reqwest::Method::PUT, format!("{base}/deployments/{name}"), Some(s)).await;
    assert!(st.is_success(), "{st}: {body}");
}

async fn claim(c: &reqwest::Client, base: &str, pool: &str, worker: &str, limit: u32, wait_ms: u64) -> Vec<Value> {
    let (s, v) = post(
        c,
        format!("{base}/work_pools/{pool}/claim"),
        json!({"worker": worker, "limit": limit, "wait_ms": wait_ms}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().unwrap().clone()
}

/// Waits (bounded) until `f` returns Some: for conditions the server reaches by itself.
async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn runs_of(db: &weir_server::Db, deployment: &str) -> Vec<(String, String, i64)> {
    use sqlx::Row;
    sqlx::query("SELECT id, state, scheduled_at FROM flow_runs WHERE deployment = $1 ORDER BY scheduled_at, id")
        .bind(deployment.to_string())
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

// ---------------------------------------------------------------------------------------

/// 8 claimers race for 200 runs (a barrier before the race): every run is claimed exactly
/// once, and none is lost.
async fn concurrent_claims(url: &str) {
    let srv = Server::start(url, fast()).await;
    let c = reqwest::Client::new();
    deploy(&c, &srv.base, spec("race", json!({}))).await;
    let mut made = HashSet::new();
    for i in 0..200 {
        let (s, r) = post(
            &c,
            format!("{}/deployments/race/runs", srv.base),
            json!({"parameters": {"n": i}}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        assert_eq!(r["state"], "Scheduled");
        made.insert(r["id"].as_str().unwrap().to_string());
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, base, barrier) = (c.clone(), srv.base.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut got = Vec::new();
            loop {
                let runs = claim(&c, &base, "pool_race", &format!("w{w}"), 1 + (w % 3), 0).await;
                if runs.is_empty() {
                    return got;
                }
                for r in runs {
                    assert_eq!(r["flow_run"]["state"], "Pending");
                    assert_eq!(r["flow_run"]["worker"], format!("w{w}"));
                    assert_eq!(r["deployment"]["name"], "race");
                    got.push(r["flow_run"]["id"].as_str().unwrap().to_string());
                }
            }
        }));
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut per_worker = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        per_worker.push(got.len());
        for id in got {
            *count.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "claimed more than once: {twice:?}");
    assert_eq!(count.keys().cloned().collect::<HashSet<_>>(), made, "every run claimed");
    assert!(
        per_worker.iter().filter(|n| **n > 0).count() > 1,
        "the claimers really raced: {per_worker:?}"
    );
    srv.stop().await;
}

/// A claim waiting for work answers as soon as a run is created (on PostgreSQL also when
/// another server creates it), not at the end of its wait.
async fn long_poll_wakes(url: &str, two_servers: bool) {
    let a = Server::start(url, fast()).await;
    let b = if two_servers {
        Some(Server::start(url, fast()).await)
    } else {
        None
    };
    let maker = b.as_ref().map(|b| b.base.clone()).unwrap_or_else(|| a.base.clone());
    let c = reqwest::Client::new();
    deploy(&c, &a.base, spec("poll", json!({}))).await;
    let waiting = {
        let (c, base) = (c.clone(), a.base.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let got = claim(&c, &base, "pool_poll", "sleeper", 1, 30_000).await;
            (got, t.elapsed())
        })
    };
    // The claim registers its worker before it waits: wait for that, then make the run.
    until("the claim to arrive", || {
        let (c, base) = (c.clone(), a.base.clone());
        async move {
            let (_, ws) = get(&c, format!("{base}/workers")).await;
            ws.as_array()
                .unwrap()
                .iter()
                .any(|w| w["name"] == "sleeper")
                .then_some(())
        }
    })
    .await;
    let made = Instant::now();
    let (s, run) = post(&c, format!("{maker}/deployments/poll/runs"), json!({})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (got, waited) = waiting.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["flow_run"]["id"], run["id"]);
    // Woken by the new run, not by the 2 s re-check nor the 30 s end of the wait.
    assert!(
        made.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        made.elapsed()
    );
    assert!(waited < Duration::from_secs(25));
    if let Some(b) = b {
        b.stop().await;
    }
    a.stop().await;
}

/// A schedule every second, with the server restarted in the middle and the deployment
/// redeployed (unchanged, then changed back and forth): exactly one run per second.
async fn schedule_across_restart(url: &str) {
    let c = reqwest::Client::new();
    let every = spec("tick", json!({"schedules": [{"type": "interval", "every_seconds": 1}]}));
    let srv = Server::start(url, fast()).await;
    deploy(&c, &srv.base, every.clone()).await;
    let first = until("runs to be made", || {
        let db = srv.db.clone();
        async move {
            let r = runs_of(&db, "tick").await;
            (r.len() >= 3).then(|| r[0].2)
        }
    })
    .await;
    deploy(&c, &srv.base, every.clone()).await;
    srv.stop().await;

    let srv = Server::start(url, fast()).await;
    // A redeploy that changes the spec replaces future runs, under the same keys.
    let mut changed = every.clone();
    changed["description"] = json!("changed");
    deploy(&c, &srv.base, changed).await;
    deploy(&c, &srv.base, every.clone()).await;
    let target = first + 6_000;
    until("the schedule to reach 6 s on", || {
        let db = srv.db.clone();
        async move { runs_of(&db, "tick").await.iter().any(|r| r.2 >= target).then_some(()) }
    })
    .await;
    srv.stop().await;
    // Clock jumps: a tick at an earlier time, then a later one, then now again.
    let db = weir_server::Db::connect(url).await.unwrap();
    let now = weir_types::time::now_micros();
    for t in [now - 5_000_000, now + 3_000_000, now] {
        scheduler::materialize(&db, t).await.unwrap();
    }
    let runs = runs_of(&db, "tick").await;
    let times: Vec<i64> = runs.iter().map(|r| r.2).collect();
    let distinct: HashSet<i64> = times.iter().copied().collect();
    assert_eq!(distinct.len(), times.len(), "a slot made twice: {times:?}");
    for w in times.windows(2) {
        assert_eq!(w[1] - w[0], 1000, "one run per second, none missing: {times:?}");
    }
    assert!(times[0] == first && *times.last().unwrap() >= target);
}

/// Two servers' schedulers on one database make each slot once: racing ticks (a barrier
/// before each), with the "made through" mark wiped between rounds so that both really
/// insert the same slots and only the unique key stops the second.
async fn two_schedulers_race(url: &str) {
    let a = weir_server::Db::connect(url).await.unwrap();
    let b = weir_server::Db::connect(url).await.unwrap();
    let srv = Server::start(
        url,
        Options {
            tick: Duration::from_secs(3600),
            ..fast()
        },
    )
    .await;
    let c = reqwest::Client::new();
    for i in 0..20 {
        deploy(
            &c,
            &srv.base,
            spec(
                &format!("twin{i}"),
                json!({"schedules": [{"type": "interval", "every_seconds": 60}]}),
            ),
        )
        .await;
    }
    srv.stop().await;
    let now = weir_types::time::now_micros();
    // What the server's own first tick made before it stopped.
    let mut made = 0;
    for i in 0..20 {
        made += runs_of(&a, &format!("twin{i}")).await.len();
    }
    for round in 0..10 {
        sqlx::query("UPDATE deployments SET scheduled_through = NULL")
            .execute(&a.pool)
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let at = now + round * 60_000_000;
        let tasks: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|db| {
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    scheduler::materialize(&db, at).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            made += t.await.unwrap();
        }
    }
    let mut total = 0;
    for i in 0..20 {
        let runs = runs_of(&a, &format!("twin{i}")).await;
        let times: HashSet<i64> = runs.iter().map(|r| r.2).collect();
        assert_eq!(times.len(), runs.len(), "twin{i}: a slot made twice");
        // 10 slots ahead at the first round, one more per later round (a minute apart).
        assert!(runs.len() >= 10 + 9, "twin{i}: {}", runs.len());
        total += runs.len();
    }
    assert_eq!(made, total, "the reported count matches what exists");
}

/// Worker reports are fenced: a worker that stopped heartbeating has its run Crashed, its
/// token is refused (409) and its next heartbeat lists the run as lost. Cancels of claimed
/// runs go through the worker; cancels of unclaimed runs are immediate; a final run is 409.
async fn fencing_and_cancel(url: &str) {
    let srv = Server::start(
        url,
        Options {
            heartbeat_timeout: Duration::from_secs(1),
            ..fast()
        },
    )
    .await;
    let c = reqwest::Client::new();
    let base = &srv.base;
    deploy(&c, base, spec("fence", json!({}))).await;
    for _ in 0..3 {
        post(&c, format!("{base}/deployments/fence/runs"), json!({})).await;
    }
    let ghost = claim(&c, base, "pool_fence", "ghost", 1, 0).await.remove(0);
    let ghost_id = ghost["flow_run"]["id"].as_str().unwrap().to_string();
    let ghost_token = ghost["token"].clone();
    let live = claim(&c, base, "pool_fence", "live", 1, 0).await.remove(0);
    let live_id = live["flow_run"]["id"].as_str().unwrap().to_string();
    let live_token = live["token"].clone();
    let hb = |worker: &str, id: &str, token: &Value| {
        json!({"worker": worker, "pool": "pool_fence", "hostname": "h", "free": 1,
            "running": [{"flow_run_id": id, "token": token}]})
    };
    // "live" keeps heartbeating; "ghost" never does.
    let crashed = until("the silent worker's run to crash", || {
        let (c, base, hbody) = (c.clone(), base.clone(), hb("live", &live_id, &live_token));
        let ghost_id = ghost_id.clone();
        async move {
            let (s, r) = post(&c, format!("{base}/workers/heartbeat"), hbody).await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(r, json!({"cancel": [], "lost": []}));
            let (_, run) = get(&c, format!("{base}/flow_runs/{ghost_id}")).await;
            (run["state"] == "Crashed").then_some(run)
        }
    })
    .await;
    assert!(
        crashed["error"]
            .as_str()
            .unwrap()
            .contains("worker ghost stopped heartbeating"),
        "{crashed}"
    );
    let (_, live_run) = get(&c, format!("{base}/flow_runs/{live_id}")).await;
    assert_eq!(live_run["state"], "Pending", "a heartbeating worker keeps its run");
    let (s, e) = post(
        &c,
        format!("{base}/flow_runs/{ghost_id}/crash"),
        json!({"token": ghost_token, "reason": "killed by signal 9 (SIGKILL)"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("claim token"), "{e}");
    let (s, r) = post(
        &c,
        format!("{base}/workers/heartbeat"),
        hb("ghost", &ghost_id, &ghost_token),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["lost"], json!([ghost_id]));
    // A token of another run is no token for this one.
    let (s, _) = post(
        &c,
        format!("{base}/flow_runs/{live_id}/crash"),
        json!({"token": ghost_token, "reason": "x"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Cancel a claimed run: the worker hears it in its heartbeat and reports /cancelled.
    let (s, r) = post(&c, format!("{base}/flow_runs/{live_id}/cancel"), json!({})).await;
    assert_eq!((s, r["cancel_requested"].clone()), (StatusCode::OK, json!(true)), "{r}");
    let (_, r) = post(
        &c,
        format!("{base}/workers/heartbeat"),
        hb("live", &live_id, &live_token),
    )
    .await;
    assert_eq!(r["cancel"], json!([live_id]));
    let (s, r) = post(
        &c,
        format!("{base}/flow_runs/{live_id}/cancelled"),
        json!({"token": live_token}),
    )
    .await;
    assert_eq!((s, r["state"].clone()), (StatusCode::OK, json!("Cancelled")), "{r}");
    // Reported again (a retry after a lost answer): nothing changes.
    let (s, r) = post(
        &c,
        format!("{base}/flow_runs/{live_id}/crash"),
        json!({"token": live_token, "reason": "late"}),
    )
    .await;
    assert_eq!((s, r["state"].clone()), (StatusCode::OK, json!("Cancelled")), "{r}");
    let (s, _) = post(&c, format!("{base}/flow_runs/{live_id}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "a final run cannot be cancelled");
    // An unclaimed run is cancelled at once, and nobody can claim it after.
    let (_, waiting) = get(&c, format!("{base}/flow_runs?flow=flow_fence&state=Scheduled")).await;
    let id = waiting["items"][0]["id"].as_str().unwrap().to_string();
    let (s, r) = post(&c, format!("{base}/flow_runs/{id}/cancel"), json!({})).await;
    assert_eq!((s, r["state"].clone()), (StatusCode::OK, json!("Cancelled")), "{r}");
    assert!(claim(&c, base, "pool_fence", "late", 5, 0).await.is_empty());
    // The workers list shows who is online.
    let (_, ws) = get(&c, format!("{base}/workers")).await;
    let online: HashMap<String, bool> = ws
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap().to_string(), w["online"].as_bool().unwrap()))
        .collect();
    assert_eq!(online.get("live"), Some(&true));
    srv.stop().await;
}

/// The flow process reports through `/events` under the run id it was given: the run keeps
/// its deployment columns; a snapshot naming another flow is refused. A crashed run is
/// retried `retries` times, no more.
async fn snapshots_and_retries(url: &str) {
    let srv = Server::start(url, fast()).await;
    let c = reqwest::Client::new();
    let base = &srv.base;
    deploy(&c, base, spec("retry", json!({"retries": 1, "tags": ["nightly"]}))).await;
    let (_, run) = post(
        &c,
        format!("{base}/deployments/retry/runs"),
        json!({"parameters": {"n": 7}}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    let got = claim(&c, base, "pool_retry", "w", 1, 0).await.remove(0);
    assert_eq!(got["parameters"], json!({"n": 7}));
    let mut snap = got["flow_run"].clone();
    for k in [
        "deployment",
        "scheduled_at",
        "work_pool",
        "worker",
        "retry_of",
        "cancel_requested",
    ] {
        snap.as_object_mut().unwrap().remove(k);
    }
    snap["state"] = json!("Running");
    snap["hostname"] = json!("box");
    snap["pid"] = json!(42);
    snap["flow_path"] = json!("flows::retry");
    let (s, r) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [{"kind": "flow_run", "record": snap}]}),
    )
    .await;
    assert_eq!((s, r["accepted"].clone()), (StatusCode::OK, json!(1)), "{r}");
    let (_, now) = get(&c, format!("{base}/flow_runs/{id}")).await;
    assert_eq!(now["state"], "Running");
    assert_eq!(now["deployment"], "retry");
    assert_eq!(now["worker"], "w");
    assert_eq!(now["work_pool"], "pool_retry");
    assert_eq!(now["hostname"], "box");
    let mut other = snap.clone();
    other["flow_name"] = json!("someone_else");
    let (_, r) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [{"kind": "flow_run", "record": other}]}),
    )
    .await;
    assert_eq!(r["rejected"][0]["code"], "conflict", "{r}");
    assert!(
        r["rejected"][0]["message"].as_str().unwrap().contains("flow_retry"),
        "{r}"
    );

    let (s, _) = post(
        &c,
        format!("{base}/flow_runs/{id}/crash"),
        json!({"token": got["token"], "reason": "killed by signal 9 (SIGKILL)"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let retry = until("the retry", || {
        let (c, base, id) = (c.clone(), base.clone(), id.clone());
        async move {
            let (_, page) = get(&c, format!("{base}/flow_runs?flow=flow_retry")).await;
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["retry_of"] == id.as_str())
                .cloned()
        }
    })
    .await;
    assert_eq!(retry["state"], "Scheduled");
    assert_eq!(retry["parameters"], json!({"n": 7}));
    assert_eq!(retry["tags"], json!(["nightly"]));
    // The retry fails too (reported by the flow process): retries are used up.
    let got = claim(&c, base, "pool_retry", "w", 1, 0).await.remove(0);
    assert_eq!(got["flow_run"]["id"], retry["id"]);
    let mut snap = got["flow_run"].clone();
    snap["state"] = json!("Failed");
    snap["error"] = json!("boom");
    let (_, r) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [{"kind": "flow_run", "record": snap}]}),
    )
    .await;
    assert_eq!(r["accepted"], 1, "{r}");
    let r = scheduler::tick(&srv.db, &fast(), weir_types::time::now_micros())
        .await
        .unwrap();
    assert_eq!(r.retries, 0);
    let (_, page) = get(&c, format!("{base}/flow_runs?flow=flow_retry")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
    srv.stop().await;
}

/// Parameters are merged over the defaults and validated: a 422 names the field. Unknown
/// deployments are 404 naming them. Bad schedules and schemas are refused at deploy.
async fn validation(url: &str) {
    let srv = Server::start(url, fast()).await;
    let c = reqwest::Client::new();
    let base = &srv.base;
    deploy(&c, base, spec("val", json!({}))).await;
    let (s, r) = post(
        &c,
        format!("{base}/deployments/val/runs"),
        json!({"parameters": {"who": "me"}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        r["parameters"],
        json!({"n": 1, "who": "me"}),
        "merged over the defaults"
    );
    for (params, field) in [
        (json!({"n": "seven"}), "parameters.n"),
        (json!({"who": 5}), "parameters.who"),
    ] {
        let (s, e) = post(
            &c,
            format!("{base}/deployments/val/runs"),
            json!({"parameters": params}),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    let mut no_default = spec("val2", json!({}));
    no_default["parameters"] = json!({});
    deploy(&c, base, no_default).await;
    let (s, e) = post(&c, format!("{base}/deployments/val2/runs"), json!({})).await;
    assert_eq!(
        (s, e["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("parameters.n")),
        "{e}"
    );
    let (s, e) = post(&c, format!("{base}/deployments/nope/runs"), json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(e["error"]["message"].as_str().unwrap().contains("'nope'"), "{e}");
    let (s, _) = get(&c, format!("{base}/deployments/nope")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    for (extra, field) in [
        (
            json!({"schedules": [{"type": "cron", "cron": "61 * * * *"}]}),
            "schedules[0]",
        ),
        (
            json!({"schedules": [{"type": "interval", "every_seconds": 5}, {"type": "cron", "cron": "0 * * * *", "timezone": "Mars/Base"}]}),
            "schedules[1]",
        ),
        (json!({"parameter_schema": {"type": "nonsense"}}), "parameter_schema"),
        (json!({"work_pool": "no spaces"}), "work_pool"),
    ] {
        let (s, e) = send(
            &c,
            reqwest::Method::PUT,
            format!("{base}/deployments/bad"),
            Some(spec("bad", extra)),
        )
        .await;
        assert_eq!(
            (s, e["error"]["field"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!(field)),
            "{e}"
        );
    }
    // Every endpoint is in the OpenAPI document.
    let (_, doc) = get(&c, format!("{base}/openapi.json")).await;
    for p in [
        "/deployments",
        "/deployments/{name}",
        "/deployments/{name}/pause",
        "/deployments/{name}/resume",
        "/deployments/{name}/runs",
        "/work_pools/{pool}/claim",
        "/work_pools/{name}",
        "/work_pools",
        "/workers",
        "/workers/heartbeat",
        "/flow_runs/{id}/cancel",
        "/flow_runs/{id}/crash",
        "/flow_runs/{id}/cancelled",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from the OpenAPI document");
    }
    srv.stop().await;
}

/// Late runs: with nobody claiming, scheduled runs become Late after the grace period and
/// each deployment's policy decides which still run. A paused deployment makes nothing.
async fn late_policies_and_pause(url: &str) {
    let srv = Server::start(
        url,
        Options {
            late_after: Duration::from_millis(500),
            ..fast()
        },
    )
    .await;
    let c = reqwest::Client::new();
    let base = &srv.base;
    for p in ["newest", "all", "skip"] {
        deploy(
            &c,
            base,
            spec(
                p,
                json!({"late_policy": p, "schedules": [{"type": "interval", "every_seconds": 1}]}),
            ),
        )
        .await;
    }
    let states = |name: &'static str| {
        let db = srv.db.clone();
        async move {
            let mut m: HashMap<String, usize> = HashMap::new();
            for r in runs_of(&db, name).await {
                *m.entry(r.1).or_default() += 1;
            }
            m
        }
    };
    // Three runs past the grace period under `all` means the others had as long.
    until("three late runs", || async {
        (states("all").await.get("Late").copied().unwrap_or(0) >= 3).then_some(())
    })
    .await;
    // One more tick, so that every policy saw the same runs.
    scheduler::tick(&srv.db, &srv_opts_late(), weir_types::time::now_micros())
        .await
        .unwrap();
    let newest = states("newest").await;
    assert_eq!(
        newest.get("Late"),
        Some(&1),
        "only the newest late run stays: {newest:?}"
    );
    assert!(newest.get("Cancelled").copied().unwrap_or(0) >= 2, "{newest:?}");
    let all = states("all").await;
    assert_eq!(all.get("Cancelled"), None, "{all:?}");
    let skip = states("skip").await;
    assert_eq!(skip.get("Late"), None, "{skip:?}");
    assert!(skip.get("Cancelled").copied().unwrap_or(0) >= 3, "{skip:?}");
    // The late run that stayed is claimable, before the on-time ones.
    let got = claim(&c, base, "pool_newest", "w", 1, 0).await;
    assert_eq!(got[0]["flow_run"]["state"], "Pending");

    // Pause: the unclaimed scheduled runs go, and ticks make no more.
    let (s, d) = post(&c, format!("{base}/deployments/all/pause"), json!({})).await;
    assert_eq!((s, d["paused"].clone()), (StatusCode::OK, json!(true)));
    let left = states("all").await;
    assert_eq!(
        left.get("Scheduled").copied().unwrap_or(0) + left.get("Late").copied().unwrap_or(0),
        0,
        "{left:?}"
    );
    let far = weir_types::time::now_micros() + 10_000_000;
    assert!(
        scheduler::materialize(&srv.db, far).await.unwrap() > 0,
        "the others still schedule"
    );
    let after = states("all").await;
    assert_eq!(after.get("Scheduled"), None, "a paused deployment made runs: {after:?}");
    let (_, d) = post(&c, format!("{base}/deployments/all/resume"), json!({})).await;
    assert_eq!(d["paused"], false);
    until("the resumed schedule", || async {
        states("all").await.get("Scheduled").map(|_| ())
    })
    .await;
    srv.stop().await;
}

fn srv_opts_late() -> Options {
    Options {
        late_after: Duration::from_millis(500),
        ..fast()
    }
}

/// Concurrency limits of a deployment and of a pool hold, also for claimers racing.
async fn concurrency_limits(url: &str) {
    let srv = Server::start(url, fast()).await;
    let c = reqwest::Client::new();
    let base = &srv.base;
    deploy(&c, base, spec("lim", json!({"concurrency_limit": 2}))).await;
    for _ in 0..6 {
        post(&c, format!("{base}/deployments/lim/runs"), json!({})).await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let (c, base, barrier) = (c.clone(), base.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                claim(&c, &base, "pool_lim", &format!("w{w}"), 5, 0).await
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    assert_eq!(got.len(), 2, "the deployment's limit of 2 holds for racing claimers");
    let (s, _) = post(
        &c,
        format!("{base}/flow_runs/{}/crash", got[0]["flow_run"]["id"].as_str().unwrap()),
        json!({"token": got[0]["token"], "reason": "x"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(claim(&c, base, "pool_lim", "w", 5, 0).await.len(), 1, "a freed slot");
    // A pool limit of 3 with the deployment's limit of 2 and another unlimited deployment.
    deploy(&c, base, spec("free", json!({"work_pool": "pool_lim"}))).await;
    for _ in 0..5 {
        post(&c, format!("{base}/deployments/free/runs"), json!({})).await;
    }
    let (s, p) = send(
        &c,
        reqwest::Method::PUT,
        format!("{base}/work_pools/pool_lim"),
        Some(json!({"concurrency_limit": 3})),
    )
    .await;
    assert_eq!((s, p["running"].clone()), (StatusCode::OK, json!(2)), "{p}");
    assert_eq!(
        claim(&c, base, "pool_lim", "w", 5, 0).await.len(),
        1,
        "the pool's limit of 3"
    );
    let (_, pools) = get(&c, format!("{base}/work_pools")).await;
    let pool = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pool_lim")
        .unwrap()
        .clone();
    assert_eq!(
        (pool["running"].clone(), pool["concurrency_limit"].clone()),
        (json!(3), json!(3))
    );
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------

macro_rules! both {
    ($sqlite:ident, $postgres:ident, |$url:ident| $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            let $url = fresh_db(None, &dir);
            $body;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $postgres() {
            let Some(pg) = Pg::start() else { return };
            let dir = tempfile::tempdir().unwrap();
            let $url = fresh_db(Some(&pg), &dir);
            $body;
        }
    };
}

both!(claims_race_on_sqlite, claims_race_on_postgres, |url| concurrent_claims(
    &url
)
.await);
both!(long_poll_on_sqlite, long_poll_on_postgres, |url| long_poll_wakes(
    &url, false
)
.await);
both!(schedule_restart_on_sqlite, schedule_restart_on_postgres, |url| {
    schedule_across_restart(&url).await
});
both!(schedulers_race_on_sqlite, schedulers_race_on_postgres, |url| {
    two_schedulers_race(&url).await
});
both!(fencing_on_sqlite, fencing_on_postgres, |url| fencing_and_cancel(&url)
    .await);
both!(retries_on_sqlite, retries_on_postgres, |url| snapshots_and_retries(
    &url
)
.await);
both!(validation_on_sqlite, validation_on_postgres, |url| validation(&url)
    .await);
both!(late_on_sqlite, late_on_postgres, |url| late_policies_and_pause(&url)
    .await);
both!(limits_on_sqlite, limits_on_postgres, |url| concurrency_limits(&url)
    .await);

/// On PostgreSQL a claim waiting on one server wakes when another server creates the run
/// (LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_across_servers_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_db(Some(&pg), &dir);
    long_poll_wakes(&url, true).await;
}
