//! API keys and tenant isolation: unauthenticated and wrong-role requests are refused on
//! every endpoint; a tenant-scoped key writes and sees its own tenant only, in views,
//! subscriptions, alerts and a corpus of SQL queries.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::weir::{SseReader, Weir};

pub fn hash(key: &str) -> String {
    format!("sha256:{}", Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

const KEYS: [(&str, &str, Option<&str>); 6] = [
    ("admin", "admin", None),
    ("pub", "publisher", None),
    ("pub-acme", "publisher", Some("acme")),
    ("cons-acme", "consumer", Some("acme")),
    ("cons", "consumer", None),
    ("ro", "read-only", None),
];

fn key(name: &str) -> String {
    format!("key-{name}-0123456789")
}

async fn call(weir: &Weir, as_key: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = weir.http.request(method.parse().unwrap(), weir.url(path));
    if let Some(k) = as_key {
        req = req.bearer_auth(key(k));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn sql(weir: &Weir, as_key: &str, query: &str) -> (u16, Value) {
    call(weir, Some(as_key), "POST", "/v1/sql", Some(json!({ "sql": query }))).await
}

/// The isolation corpus over the raw archive: `{ev}` and `{ev2}` are the events' archive
/// (aliased `e` and `f`), `{bk}` the per-kind view.
const ARCHIVE_CORPUS: &[&str] = &[
    "SELECT count(*) AS n FROM {ev}",
    "SELECT tenant, kind, count(*) AS n FROM {ev} GROUP BY tenant, kind ORDER BY tenant, kind",
    "SELECT DISTINCT tenant FROM {ev} ORDER BY 1",
    "SELECT date, count(*) AS n FROM {ev} GROUP BY date ORDER BY date",
    "SELECT e.kind, b.n FROM {ev} JOIN {bk} b ON e.kind = b.kind ORDER BY 1, 2",
    "SELECT count(*) AS n FROM {ev} JOIN {ev2} ON e.tenant <> f.tenant",
    "SELECT kind FROM {ev} UNION SELECT kind FROM {ev2} ORDER BY 1",
    "SELECT kind, row_number() OVER (PARTITION BY tenant ORDER BY ts, kind) AS r FROM {ev} ORDER BY ts, kind",
    "SELECT count(*) AS n FROM {ev} WHERE tenant IN (SELECT tenant FROM {ev2} WHERE f.tenant = 'globex')",
    "SELECT count(*) AS n FROM {ev} WHERE EXISTS (SELECT 1 FROM {ev2} WHERE f.tenant <> e.tenant)",
    "SELECT max(ts) AS latest, min(ts) AS first FROM {ev}",
    "SELECT count(*) AS n FROM {ev} WHERE tenant = 'globex' OR tenant = 'initech'",
];

/// The isolation corpus: `{pm}` is a per-minute view, `{bk}` a per-kind view.
const CORPUS: &[&str] = &[
    "SELECT * FROM {pm} ORDER BY minute, tenant",
    "SELECT count(*) FROM {pm}",
    "SELECT sum(n), sum(total) FROM {pm}",
    "SELECT tenant, sum(n) FROM {pm} GROUP BY tenant ORDER BY tenant",
    "SELECT DISTINCT tenant FROM {pm} ORDER BY tenant",
    "SELECT * FROM {bk} ORDER BY tenant, kind",
    "SELECT kind, sum(n) FROM {bk} GROUP BY kind ORDER BY kind",
    "SELECT max(n), min(n) FROM {bk}",
    "SELECT p.minute, b.kind FROM {pm} p JOIN {bk} b ON p.tenant = b.tenant ORDER BY 1, 2",
    "SELECT count(*) FROM {pm} p CROSS JOIN {bk} b",
    "SELECT tenant FROM {pm} UNION SELECT tenant FROM {bk} ORDER BY 1",
    "SELECT tenant FROM {pm} UNION ALL SELECT tenant FROM {bk} ORDER BY 1",
    "SELECT * FROM {bk} WHERE n > (SELECT avg(n) FROM {bk}) ORDER BY kind",
    "SELECT kind FROM {bk} WHERE tenant IN (SELECT tenant FROM {pm}) ORDER BY kind",
    "SELECT kind, n, rank() OVER (ORDER BY n DESC, kind) AS r FROM {bk} ORDER BY r",
    "SELECT kind, sum(n) OVER (PARTITION BY tenant ORDER BY kind) AS s FROM {bk} ORDER BY kind",
    "SELECT * FROM {bk} WHERE tenant <> 'acme'",
    "SELECT * FROM {bk} WHERE tenant = 'globex'",
    "SELECT count(*) FROM {bk} WHERE kind LIKE '%globex%'",
    "SELECT (SELECT count(*) FROM {pm}) + (SELECT count(*) FROM {bk}) AS both_counts",
    "WITH t AS (SELECT tenant, sum(n) AS s FROM {bk} GROUP BY tenant) SELECT * FROM t ORDER BY tenant",
    "SELECT * FROM {bk} b WHERE EXISTS (SELECT 1 FROM {pm} p WHERE p.tenant = b.tenant) ORDER BY kind",
    "SELECT kind FROM {bk} EXCEPT SELECT 'x' ORDER BY 1",
    "SELECT upper(tenant) AS t, length(kind) AS l, kind FROM {bk} ORDER BY kind",
    "SELECT date_trunc('hour', minute) AS h, count(*) AS c FROM {pm} GROUP BY 1 ORDER BY 1",
    "SELECT * FROM {pm} ORDER BY minute LIMIT 1000 OFFSET 1",
    "SELECT tenant, count(DISTINCT kind) FROM {bk} GROUP BY tenant ORDER BY tenant",
    "SELECT array_agg(kind ORDER BY kind) AS kinds FROM {bk}",
    "SELECT string_agg(kind, ',' ORDER BY kind) AS kinds FROM {bk}",
    "SELECT * FROM {bk} ORDER BY n DESC, kind LIMIT 3",
    "SELECT kind, lag(n) OVER (ORDER BY kind) AS prev FROM {bk} ORDER BY kind",
    "SELECT t.tenant FROM (SELECT tenant FROM {bk} GROUP BY tenant HAVING count(*) > 0) t ORDER BY 1",
    "SELECT CASE WHEN n > 2 THEN 'big' ELSE 'small' END AS size, count(*) AS c FROM {bk} GROUP BY 1 ORDER BY 1",
    "SELECT a.kind AS a, b.kind AS b FROM {bk} a JOIN {bk} b ON a.n = b.n AND a.kind < b.kind ORDER BY 1, 2",
    "SELECT b.kind, p.minute FROM {bk} b FULL OUTER JOIN {pm} p ON b.tenant = p.tenant ORDER BY 1, 2",
    "SELECT b.kind, p.minute FROM {bk} b LEFT JOIN {pm} p ON false ORDER BY 1",
    "SELECT min(minute), max(minute) FROM {pm}",
    "SELECT avg(total) FROM {pm}",
    "SELECT minute, n, sum(n) OVER (PARTITION BY tenant ORDER BY minute ROWS UNBOUNDED PRECEDING) AS running FROM {pm} ORDER BY minute",
    "SELECT count(*) FILTER (WHERE n > 1) AS c FROM {pm}",
    "SELECT * FROM (SELECT * FROM {bk} UNION ALL SELECT * FROM {bk}) ORDER BY kind",
    "SELECT kind FROM {bk} INTERSECT SELECT kind FROM {bk} ORDER BY 1",
    "SELECT approx_distinct(kind) AS d FROM {bk}",
    "SELECT tenant, kind FROM {bk} WHERE kind IN ('acme-k0', 'globex-k0', 'shared') ORDER BY kind",
    "SELECT row_number() OVER (ORDER BY kind) AS r, kind FROM {bk} ORDER BY 1",
    "SELECT count(*) FROM {pm} WHERE tenant = 'acme' OR tenant = 'globex'",
    "SELECT * FROM {pm} WHERE minute >= TIMESTAMP '2026-11-22T10:00:00Z' ORDER BY minute",
    "SELECT tenant, sum(n) AS s FROM {bk} GROUP BY ROLLUP(tenant) ORDER BY 1 NULLS LAST",
    "SELECT kind FROM {bk} WHERE kind NOT IN (SELECT kind FROM {bk} WHERE n > 100) ORDER BY 1",
    "SELECT sum(x.n) FROM (SELECT n FROM {bk} ORDER BY n DESC LIMIT 2) x",
    "SELECT max(length(kind)) FROM {bk} WHERE tenant NOT LIKE 'a%'",
    "SELECT coalesce(max(kind), 'none') AS k FROM {bk} WHERE tenant = 'initech'",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roles_and_tenant_isolation() {
    let entries: Vec<String> = KEYS
        .iter()
        .map(|(name, role, tenant)| {
            let tenant = tenant.map(|t| format!(", tenant = \"{t}\"")).unwrap_or_default();
            format!("{{name = \"{name}\", hash = \"{}\", role = \"{role}\"{tenant}}}", hash(&key(name)))
        })
        .collect();
    let keys = format!("[{}]", entries.join(", "));
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[("WEIR_AUTH__ENABLED", "true"), ("WEIR_AUTH__KEYS", &keys), ("WEIR_ARCHIVE__INTERVAL", "200ms")]);

    // no key, or a wrong one: 401 on every endpoint but the health checks
    let endpoints = [
        ("GET", "/v1/streams"),
        ("POST", "/v1/streams/events/events"),
        ("GET", "/v1/views"),
        ("POST", "/v1/views"),
        ("GET", "/v1/views/x"),
        ("DELETE", "/v1/views/x"),
        ("GET", "/v1/views/x/subscribe"),
        ("POST", "/v1/sql"),
        ("GET", "/v1/alerts"),
        ("GET", "/v1/alerts/stream"),
        ("GET", "/v1/anomalies"),
        ("POST", "/v1/anomalies"),
        ("DELETE", "/v1/anomalies/x"),
        ("GET", "/v1/tenants/acme/quota"),
        ("PUT", "/v1/tenants/acme/quota"),
        ("DELETE", "/v1/tenants/acme/quota"),
    ];
    for (method, path) in endpoints {
        assert_eq!(call(&weir, None, method, path, None).await.0, 401, "{method} {path} without a key");
        let mut req = weir.http.request(method.parse().unwrap(), weir.url(path));
        req = req.bearer_auth("not-a-key");
        assert_eq!(req.send().await.unwrap().status(), 401, "{method} {path} with a bad key");
    }
    for path in ["/livez", "/readyz"] {
        assert_eq!(call(&weir, None, "GET", path, None).await.0, 200);
    }
    // roles: what each may not do
    let refused = [
        ("pub", "GET", "/v1/views"),
        ("pub", "POST", "/v1/sql"),
        ("ro", "POST", "/v1/streams/events/events"),
        ("ro", "POST", "/v1/views"),
        ("ro", "DELETE", "/v1/anomalies/x"),
        ("cons", "POST", "/v1/streams/events/events"),
        ("cons", "PUT", "/v1/tenants/acme/quota"),
        ("cons-acme", "POST", "/v1/views"),
        ("cons-acme", "POST", "/v1/anomalies"),
        ("cons-acme", "GET", "/v1/tenants/globex/quota"),
    ];
    for (who, method, path) in refused {
        assert_eq!(call(&weir, Some(who), method, path, Some(json!({}))).await.0, 403, "{who} {method} {path}");
    }

    let views = [
        ("per_minute", "SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, count(*) AS n, sum(value) AS total FROM events {w} GROUP BY 1, 2"),
        ("by_kind", "SELECT tenant, kind, count(*) AS n FROM events {w} GROUP BY tenant, kind"),
    ];
    for (name, body) in views {
        for (suffix, filter) in [("", ""), ("_acme", "WHERE tenant = 'acme'")] {
            let sql = format!("CREATE VIEW {name}{suffix} AS {}", body.replace("{w}", filter));
            assert_eq!(call(&weir, Some("admin"), "POST", "/v1/views", Some(json!({ "sql": sql }))).await.0, 201);
        }
    }
    let totals = json!({"sql": "CREATE VIEW totals AS SELECT kind, count(*) AS n FROM events GROUP BY kind"});
    assert_eq!(call(&weir, Some("cons"), "POST", "/v1/views", Some(totals)).await.0, 201);

    let mut sse = SseReader::open_with_key(&weir, "/v1/views/by_kind/subscribe", &key("cons-acme")).await;
    assert_eq!(sse.next().await.data["rows"], json!([]));

    // a scoped publisher writes its tenant only; the unscoped one writes everyone's
    let mut lines = Vec::new();
    for (t, tenant) in ["acme", "globex", "initech"].iter().enumerate() {
        for i in 0..(6 + t * 3) {
            let kind = if i % 4 == 3 { "shared".to_string() } else { format!("{tenant}-k{}", i % 3) };
            lines.push(json!({"tenant": tenant, "ts": format!("2026-11-22T10:0{}:1{}Z", i % 3, i % 10), "kind": kind, "value": i}));
        }
    }
    let ndjson = |ls: &[Value]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    let acme: Vec<Value> = lines.iter().filter(|l| l["tenant"] == "acme").cloned().collect();
    let post = |who: &'static str, body: String| {
        weir.http.post(weir.url("/v1/streams/events/events")).bearer_auth(key(who)).body(body).send()
    };
    assert_eq!(post("pub-acme", ndjson(&lines)).await.unwrap().status(), 403, "other tenants' lines refuse the request");
    assert_eq!(post("pub-acme", ndjson(&acme)).await.unwrap().status(), 200);
    let others: Vec<Value> = lines.iter().filter(|l| l["tenant"] != "acme").cloned().collect();
    let receipt: Value = post("pub", ndjson(&others)).await.unwrap().json().await.unwrap();
    let epoch = receipt["epoch"].as_u64().unwrap();

    // views and subscriptions show the scoped key its own rows
    let (status, read) = call(&weir, Some("cons-acme"), "GET", &format!("/v1/views/by_kind?min_epoch={epoch}"), None).await;
    assert_eq!(status, 200);
    let tenants: Vec<&str> = read["rows"].as_array().unwrap().iter().map(|r| r["tenant"].as_str().unwrap()).collect();
    assert!(!tenants.is_empty() && tenants.iter().all(|t| *t == "acme"), "{read}");
    let (_, all) = call(&weir, Some("ro"), "GET", "/v1/views/by_kind", None).await;
    assert!(all["rows"].as_array().unwrap().iter().any(|r| r["tenant"] == "globex"), "unscoped keys see everyone");
    assert_eq!(call(&weir, Some("cons-acme"), "GET", "/v1/views/totals", None).await.0, 403, "no tenant column, no access");
    for _ in 0..8 {
        let change = sse.next().await;
        assert_eq!(change.data["row"]["tenant"], "acme", "{change:?}");
        if change.data["row"]["kind"] == "shared" {
            break;
        }
    }

    // the SQL corpus: with acme's key, every query sees exactly what it sees over views
    // holding acme's rows only, and never a value of another tenant
    assert!(CORPUS.len() >= 50);
    for template in CORPUS {
        let scoped = template.replace("{pm}", "live.per_minute").replace("{bk}", "live.by_kind");
        let reference = template.replace("{pm}", "live.per_minute_acme").replace("{bk}", "live.by_kind_acme");
        let (status, got) = sql(&weir, "cons-acme", &scoped).await;
        assert_eq!(status, 200, "{scoped}: {got}");
        let (_, want) = sql(&weir, "admin", &reference).await;
        // unnamed columns are named after their tables
        let want = want["rows"].to_string().replace("live.per_minute_acme", "live.per_minute").replace("live.by_kind_acme", "live.by_kind");
        assert_eq!(got["rows"].to_string(), want, "{scoped}");
        let text = got["rows"].to_string();
        assert!(!text.contains("globex") && !text.contains("initech"), "{scoped}: {text}");
    }
    // the same corpus over the Delta snapshots, and through time travel
    assert_eq!(call(&weir, Some("admin"), "POST", "/v1/snapshots", None).await.0, 200);
    for template in CORPUS.iter().take(25) {
        for (scoped_pm, scoped_bk, ref_pm, ref_bk) in [
            ("per_minute", "by_kind", "per_minute_acme", "by_kind_acme"),
            ("snapshot('per_minute', version => 0)", "snapshot('by_kind', version => 0)", "snapshot('per_minute_acme', version => 0)", "snapshot('by_kind_acme', version => 0)"),
        ] {
            let scoped = template.replace("{pm}", scoped_pm).replace("{bk}", scoped_bk);
            let reference = template.replace("{pm}", ref_pm).replace("{bk}", ref_bk);
            let (status, got) = sql(&weir, "cons-acme", &scoped).await;
            assert_eq!(status, 200, "{scoped}: {got}");
            let (_, want) = sql(&weir, "admin", &reference).await;
            let want = want["rows"].to_string().replace("per_minute_acme", "per_minute").replace("by_kind_acme", "by_kind");
            assert_eq!(got["rows"].to_string(), want, "{scoped}");
            assert!(!got["rows"].to_string().contains("globex"), "{scoped}");
        }
    }
    // and over the raw archive of the events, once it holds every event
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, archived) = sql(&weir, "admin", "SELECT count(*) AS n FROM events").await;
        let (_, live) = sql(&weir, "admin", "SELECT sum(n) AS n FROM live.by_kind").await;
        if archived["rows"].is_array() && archived["rows"] == live["rows"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the archive did not fill: {archived} vs {live}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for template in ARCHIVE_CORPUS {
        for table in ["events", "archive.events"] {
            let scoped = template.replace("{ev}", &format!("{table} AS e")).replace("{ev2}", &format!("{table} AS f")).replace("{bk}", "live.by_kind");
            let own = format!("(SELECT * FROM {table} WHERE tenant = 'acme')");
            let reference = template.replace("{ev}", &format!("{own} AS e")).replace("{ev2}", &format!("{own} AS f")).replace("{bk}", "live.by_kind_acme");
            let (status, got) = sql(&weir, "cons-acme", &scoped).await;
            assert_eq!(status, 200, "{scoped}: {got}");
            let (_, want) = sql(&weir, "admin", &reference).await;
            assert_eq!(got["rows"], want["rows"], "{scoped}");
            assert!(!got["rows"].to_string().contains("globex") && !got["rows"].to_string().contains("initech"), "{scoped}");
        }
    }
    let (status, _) = sql(&weir, "cons-acme", "SELECT * FROM totals").await;
    assert_eq!(status, 400, "a snapshot without a tenant column is not readable with a scoped key");
    let (status, _) = sql(&weir, "cons-acme", "SELECT * FROM live.totals").await;
    assert_eq!(status, 400, "a view without a tenant column is not readable with a scoped key");
    let (status, schema) = sql(&weir, "cons-acme", "SELECT table_name FROM information_schema.tables WHERE table_schema = 'live' ORDER BY 1").await;
    assert_eq!(status, 200);
    assert!(!schema["rows"].to_string().contains("globex"));
    let (_, unscoped) = sql(&weir, "ro", "SELECT count(DISTINCT tenant) AS t FROM live.by_kind").await;
    assert_eq!(unscoped["rows"], json!([{"t": 3}]));
}
