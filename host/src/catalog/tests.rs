use super::*;

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("reel-catalog-{name}-{}-{}", std::process::id(), fastrand::u32(..)));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn sqlite(name: &str) -> Catalog {
    Catalog::open(&CatalogConfig::default(), &dir(name), "node-a".into()).await.unwrap()
}

fn rec(stream: &str, start_ms: i64, id: &str) -> Recording {
    Recording {
        id: id.into(),
        domain: "example.com".into(),
        app: "live".into(),
        stream: stream.into(),
        format: "flv".into(),
        storage: "local".into(),
        key: format!("live/{stream}/{start_ms}.flv"),
        size: 1000,
        duration_ms: 10_000,
        first_ts_ms: 0,
        last_ts_ms: 9_960,
        start_ms,
        end_ms: start_ms + 10_000,
        session_id: "s1".into(),
        task_id: None,
        template: "default".into(),
        node_id: "node-a".into(),
        video_codec: Some("h264".into()),
        audio_codec: Some("aac".into()),
        failed: false,
        etag: None,
        upload_state: "stored".into(),
    }
}

fn task(id: &str, created_ms: i64) -> Task {
    Task {
        id: id.into(),
        domain: "*".into(),
        app: "live".into(),
        stream: "cam".into(),
        start_ms: 1_000,
        end_ms: 2_000,
        template: "t".into(),
        note: Some("highlight".into()),
        status: TaskStatus::Scheduled,
        reason: None,
        node_id: None,
        created_ms,
        updated_ms: created_ms,
        url: None,
    }
}

#[tokio::test]
async fn migrations_apply_once_and_a_reopen_keeps_rows() {
    let d = dir("reopen");
    let c = Catalog::open(&CatalogConfig::default(), &d, "n".into()).await.unwrap();
    c.insert_recording(&rec("cam", 1, "0a")).await.unwrap();
    c.close().await;
    let c = Catalog::open(&CatalogConfig::default(), &d, "n".into()).await.unwrap();
    assert_eq!(c.recording("0a").await.unwrap().unwrap(), rec("cam", 1, "0a"));
    assert!(c.ping().await);
}

#[tokio::test]
async fn recordings_list_newest_first_in_pages_by_stream_and_time() {
    listing(&sqlite("list").await).await;
}

async fn listing(c: &Catalog) {
    let mut rows = Vec::new();
    for i in 0..25i64 {
        rows.push(rec("cam", i * 10_000, &format!("{i:04x}")));
        rows.push(rec("other", i * 10_000, &format!("f{i:03x}")));
    }
    c.insert_recordings(&rows).await.unwrap();
    let mut q = RecordingQuery { stream: Some("cam".into()), limit: 10, ..Default::default() };
    let mut seen = Vec::new();
    loop {
        let page = c.recordings(&q).await.unwrap();
        assert!(page.items.iter().all(|r| r.stream == "cam"));
        seen.extend(page.items.iter().map(|r| r.start_ms));
        match page.next {
            Some(n) => q.cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).rev().map(|i| i * 10_000).collect::<Vec<_>>());

    // Overlap with [from, to]: a file from 40 s to 50 s overlaps [45 s, 65 s].
    let q = RecordingQuery {
        stream: Some("cam".into()),
        from_ms: Some(45_000),
        to_ms: Some(65_000),
        limit: 100,
        ..Default::default()
    };
    let got: Vec<i64> = c.recordings(&q).await.unwrap().items.iter().map(|r| r.start_ms).collect();
    assert_eq!(got, vec![60_000, 50_000, 40_000]);

    let bad = RecordingQuery { cursor: Some("x' OR 1=1 --".into()), limit: 1, ..Default::default() };
    assert!(matches!(c.recordings(&bad).await, Err(CatalogError::Cursor(_))));
}

#[tokio::test]
async fn a_deleted_recording_is_gone() {
    let c = sqlite("delete").await;
    c.insert_recording(&rec("cam", 1, "01")).await.unwrap();
    assert!(c.delete_recording("01").await.unwrap());
    assert!(!c.delete_recording("01").await.unwrap());
    assert_eq!(c.recording("01").await.unwrap(), None);
}

#[tokio::test]
async fn a_task_that_ended_stays_ended() {
    task_states(&sqlite("tasks").await).await;
}

async fn task_states(c: &Catalog) {
    c.insert_task(&task("0001", 1)).await.unwrap();
    c.insert_task(&task("0002", 2)).await.unwrap();
    assert_eq!(c.count_active_tasks("live", "cam").await.unwrap(), 2);
    assert!(c.set_task_status("0001", TaskStatus::Recording, None, 5).await.unwrap());
    let t = c.task("0001").await.unwrap().unwrap();
    assert_eq!((t.status, t.node_id.as_deref(), t.updated_ms), (TaskStatus::Recording, Some("node-a"), 5));
    // The recording node's heartbeat moves `updated_ms` (and the node) while it records.
    assert!(c.touch_task("0001", 6).await.unwrap());
    assert_eq!(c.task("0001").await.unwrap().unwrap().updated_ms, 6);
    assert!(!c.touch_task("0002", 6).await.unwrap(), "only a recording task is touched");
    assert!(c.set_task_status("0001", TaskStatus::Stopped, None, 6).await.unwrap());
    // Stopped is final: a node that still believes it records cannot revive it.
    assert!(!c.set_task_status("0001", TaskStatus::Recording, None, 7).await.unwrap());
    assert!(!c.set_task_status("0001", TaskStatus::Completed, None, 7).await.unwrap());
    assert_eq!(c.task("0001").await.unwrap().unwrap().status, TaskStatus::Stopped);
    assert_eq!(c.active_tasks().await.unwrap().iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["0002"]);
    assert!(c.set_task_status("0002", TaskStatus::Failed, Some("no such template"), 8).await.unwrap());
    let t = c.task("0002").await.unwrap().unwrap();
    assert_eq!(t.reason.as_deref(), Some("no such template"));

    let q = TaskQuery { status: Some(TaskStatus::Stopped), limit: 10, ..Default::default() };
    assert_eq!(c.tasks(&q).await.unwrap().items.len(), 1);
    let all = c.tasks(&TaskQuery { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(all.items[0].id, "0002");
    let rest = c.tasks(&TaskQuery { limit: 1, cursor: all.next, ..Default::default() }).await.unwrap();
    assert_eq!((rest.items[0].id.as_str(), rest.next), ("0001", None));
    assert!(c.delete_task("0001").await.unwrap());
    assert_eq!(c.task("0001").await.unwrap(), None);
}

fn new_event(id: &str, url: &str, created_ms: i64) -> NewEvent {
    NewEvent {
        id: id.into(),
        event: "file_created".into(),
        domain: "d".into(),
        app: "live".into(),
        stream: "cam".into(),
        task_id: None,
        created_ms,
        url: url.into(),
        headers: vec![("X-Reel-Event-Id".into(), id.into())],
        // Not UTF-8: kept as base64 and given back byte for byte.
        body: vec![0xff, 0x00, b'{', b'}'],
        timeout_ms: 5_000,
        max_attempts: 0,
        expires_ms: created_ms + 86_400_000,
    }
}

/// Two nodes on one outbox: a due event is leased to one of them at a time, the outcome sticks.
async fn outbox(a: &Catalog, b: &Catalog) {
    let told = |c: &Catalog| {
        let c = c.clone();
        async move { tokio::time::timeout(std::time::Duration::from_millis(200), c.events_queued()).await.is_ok() }
    };
    assert_eq!(a.next_event_due().await.unwrap(), None, "nothing pending");
    let events: Vec<NewEvent> = (0..6).map(|i| new_event(&format!("e{i:03}"), "http://x/cb", 1_000 + i)).collect();
    a.enqueue_events(&events).await.unwrap();
    assert!(told(a).await, "queueing wakes the deliverer");
    assert_eq!(a.next_event_due().await.unwrap(), Some(1_000), "the oldest is due first");
    let (ca, cb) = tokio::join!(a.claim_events(2_000, 60_000, 4), b.claim_events(2_000, 60_000, 4));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(b.next_event_due().await.unwrap(), Some(60_000), "all leased: due when the leases end");
    assert_eq!(ca.len() + cb.len(), 6, "every event claimed once");
    assert!(ca.iter().all(|e| !cb.iter().any(|f| f.id == e.id)), "never by both");
    assert!(a.claim_events(2_000, 60_000, 10).await.unwrap().is_empty(), "leased");
    let got = a.event("e000").await.unwrap().unwrap();
    assert_eq!(got.body, vec![0xff, 0x00, b'{', b'}']);
    assert_eq!(got.headers, vec![("X-Reel-Event-Id".to_string(), "e000".to_string())]);
    a.event_delivered("e000", 2_100, 200).await.unwrap();
    a.event_attempt_failed("e001", 2_100, None, "HTTP 410", Some(410)).await.unwrap();
    b.event_attempt_failed("e002", 2_100, Some(9_000), "HTTP 503", Some(503)).await.unwrap();
    // The endpoint is down: the rest wait for 9 s; it answers: all due now.
    assert_eq!(a.defer_events("http://x/cb", 3_000, 9_000).await.unwrap(), 0, "leased rows stay");
    assert!(told(b).await, "an attempt to repeat later wakes the deliverer");
    for id in ["e003", "e004", "e005"] {
        a.release_event(id, 5_000).await.unwrap();
    }
    assert!(told(a).await, "an event given back wakes the deliverer");
    assert_eq!(a.next_event_due().await.unwrap(), Some(5_000));
    assert_eq!(a.defer_events("http://x/cb", 3_000, 9_000).await.unwrap(), 3);
    assert_eq!(a.next_event_due().await.unwrap(), Some(9_000));
    assert_eq!(a.count_due_events(8_999).await.unwrap(), 0);
    assert_eq!(b.hurry_events("http://x/cb", 3_000).await.unwrap(), 4);
    assert_eq!(a.count_due_events(3_000).await.unwrap(), 4);
    assert_eq!(a.count_events(EventStatus::Delivered).await.unwrap(), 1);
    let failed =
        a.events(&EventQuery { status: Some(EventStatus::Failed), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(failed.items.len(), 1);
    assert_eq!((failed.items[0].last_status, failed.items[0].last_error.as_deref()), (Some(410), Some("HTTP 410")));
    let page = a.events(&EventQuery { limit: 4, ..Default::default() }).await.unwrap();
    assert_eq!(page.items.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e005", "e004", "e003", "e002"]);
    let rest = a.events(&EventQuery { limit: 4, cursor: page.next, ..Default::default() }).await.unwrap();
    assert_eq!(rest.items.len(), 2);
    assert_eq!(a.retry_event("e001", 4_000, 100_000).await.unwrap(), Some(true));
    assert_eq!(a.retry_event("e000", 4_000, 100_000).await.unwrap(), Some(false));
    assert_eq!(a.prune_events(3_000).await.unwrap(), 1, "delivered, finished before 3 s");
    assert!(a.event("e000").await.unwrap().is_none());
}

/// One node holds a pull task's lease at a time; it lapses when not renewed.
async fn leases(a: &Catalog, b: &Catalog) {
    let t = Task {
        id: "pull1".into(),
        status: TaskStatus::Waiting,
        url: Some("rtmp://x/live/y".into()),
        ..task("pull1", 5)
    };
    a.insert_task(&t).await.unwrap();
    assert!(a.lease_task("pull1", 1_000, 11_000).await.unwrap());
    assert!(!b.lease_task("pull1", 2_000, 12_000).await.unwrap(), "held by a");
    assert!(a.lease_task("pull1", 5_000, 15_000).await.unwrap(), "renewed by its holder");
    assert!(!b.lease_task("pull1", 14_999, 24_999).await.unwrap());
    assert!(b.lease_task("pull1", 15_000, 25_000).await.unwrap(), "lapsed: b takes over");
    assert!(!a.lease_task("pull1", 16_000, 26_000).await.unwrap());
    b.release_task("pull1").await.unwrap();
    assert!(a.lease_task("pull1", 16_000, 26_000).await.unwrap(), "given back");
    a.set_task_status("pull1", TaskStatus::Failed, Some("x"), 17_000).await.unwrap();
    assert!(!a.lease_task("pull1", 30_000, 40_000).await.unwrap(), "an ended task is leased to nobody");
    assert_eq!(a.task("pull1").await.unwrap().unwrap().url.as_deref(), Some("rtmp://x/live/y"));
    let pulls = a.tasks(&TaskQuery { pull: Some(true), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(pulls.items.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["pull1"]);
}

#[tokio::test]
async fn pull_task_leases_go_to_one_node_at_a_time() {
    // Two nodes on one SQLite file.
    let d = dir("leases");
    let a = Catalog::open(&CatalogConfig::default(), &d, "node-a".into()).await.unwrap();
    let b = Catalog::open(&CatalogConfig::default(), &d, "node-b".into()).await.unwrap();
    leases(&a, &b).await;
}

#[tokio::test]
async fn the_outbox_leases_events_and_keeps_outcomes() {
    let a = sqlite("outbox").await;
    outbox(&a, &a.clone()).await;
}

#[test]
fn passwords_stay_out_of_logs() {
    assert_eq!(redact("postgres://reel:secret@db:5432/reel"), "postgres://reel:***@db:5432/reel");
    assert_eq!(redact("sqlite:///var/reel.db"), "sqlite:///var/reel.db");
}

#[tokio::test]
async fn postgres_speaks_the_same_sql() {
    let Some(pg) = reel_test_support::postgres::Postgres::start() else {
        panic!("PostgreSQL is not installed: run tests/run, which installs it");
    };
    let config = CatalogConfig { url: Some(pg.url.clone()), ..Default::default() };
    // Two nodes starting together apply the migrations once.
    let (a, b) = tokio::join!(
        Catalog::open(&config, Path::new("unused"), "node-a".into()),
        Catalog::open(&config, Path::new("unused"), "node-b".into())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.backend(), Backend::Postgres);
    grouped_inserts(&b).await;
    listing(&a).await;
    task_states(&a).await;
    assert_eq!(b.recording("0001").await.unwrap().unwrap().stream, "cam");
    outbox(&a, &b).await;
    leases(&a, &b).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_closed_together_are_inserted_together_and_a_bad_row_loses_no_other() {
    grouped_inserts(&sqlite("group").await).await;
}

/// 300 files closed at once go in a few statements (more than one statement holds); then, in
/// 50 more, a row the database refuses (an id already there) fails alone.
async fn grouped_inserts(c: &Catalog) {
    let statements = || c.group.statements.load(std::sync::atomic::Ordering::Relaxed);
    let at_once = |ids: Vec<(String, i64)>| {
        let c = c.clone();
        async move {
            let inserts: Vec<_> = ids
                .into_iter()
                .map(|(id, start)| {
                    let c = c.clone();
                    tokio::spawn(async move { (id.clone(), c.insert_recording(&rec("group", start, &id)).await) })
                })
                .collect();
            let mut failed = Vec::new();
            for t in inserts {
                let (id, res) = t.await.unwrap();
                if let Err(e) = res {
                    failed.push((id, e.to_string()));
                }
            }
            failed
        }
    };
    let before = statements();
    let failed = at_once((0..300).map(|i| (format!("g-{i:03}"), i + 1)).collect()).await;
    assert!(failed.is_empty(), "{failed:?}");
    let used = statements() - before;
    // One insert each would be 300 statements.
    assert!(used <= 100, "{used} statements for 300 rows");
    for i in 0..300 {
        let id = format!("g-{i:03}");
        assert_eq!(c.recording(&id).await.unwrap().map(|r| r.start_ms), Some(i + 1), "{id}");
    }

    let failed =
        at_once((300..350).map(|i| (if i == 320 { "g-000".into() } else { format!("g-{i:03}") }, i + 1)).collect())
            .await;
    assert_eq!(failed.len(), 1, "only the duplicate fails: {failed:?}");
    assert_eq!(failed[0].0, "g-000");
    for i in (300..350).filter(|&i| i != 320) {
        let id = format!("g-{i:03}");
        assert_eq!(c.recording(&id).await.unwrap().map(|r| r.start_ms), Some(i + 1), "{id}");
    }
    assert_eq!(c.recording("g-000").await.unwrap().unwrap().start_ms, 1, "the first row stays");
}

/// Files of streams cut together close one every few milliseconds, each insert done before the
/// next comes: inserted in a burst, they still share statements (one each without the wait for
/// the burst: 40). A lone row, one after a quiet spell and rows inserted one by one outside a
/// burst go in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_closed_over_a_second_share_statements_and_a_lone_row_does_not_wait() {
    use std::sync::atomic::Ordering::Relaxed;
    let c = sqlite("burst").await;
    let statements = || c.group.statements.load(Relaxed);
    let lingered = || c.group.lingered.load(Relaxed);
    c.insert_recording_in_burst(&rec("burst", 1, "lone")).await.unwrap();
    assert_eq!(lingered(), 0, "a lone row waited");
    tokio::time::sleep(GROUP_LINGER * 2).await;

    let before = statements();
    let mut inserts = Vec::new();
    for i in 0..40 {
        let c = c.clone();
        let id = format!("b-{i:02}");
        inserts.push(tokio::spawn(async move { c.insert_recording_in_burst(&rec("burst", i + 2, &id)).await }));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for t in inserts {
        t.await.unwrap().unwrap();
    }
    let used = statements() - before;
    assert!(used <= 12, "{used} statements for 40 rows closed 10 ms apart");
    for i in 0..40 {
        assert!(c.recording(&format!("b-{i:02}")).await.unwrap().is_some(), "b-{i:02}");
    }

    tokio::time::sleep(GROUP_LINGER * 2).await;
    let waits = lingered();
    c.insert_recording_in_burst(&rec("burst", 100, "after")).await.unwrap();
    assert_eq!(lingered(), waits, "a row after a quiet spell waited");
    for i in 0..5 {
        c.insert_recording(&rec("burst", 200 + i, &format!("o-{i}"))).await.unwrap();
    }
    assert_eq!(lingered(), waits, "rows inserted one by one waited");
    assert_eq!(statements() - before, used + 6);
}
