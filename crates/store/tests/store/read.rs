use sqlx::PgPool;
use switchyard_events::{Cursor, EventType};
use switchyard_store::ReadFilter;

use crate::{memory, read_n, store, ws};

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn global_reads_page_and_filter(pool: PgPool) {
    let store = store(&pool);
    for i in 0..10 {
        let workspace = if i % 2 == 0 { "even" } else { "odd" };
        store
            .append(vec![memory(workspace, "agent/a", &format!("k{i}"))])
            .await
            .unwrap();
    }

    assert_eq!(
        read_n(&store, Cursor::START, &ReadFilter::default(), 10)
            .await
            .events
            .len(),
        10
    );

    // Paging through everything returns each event once, in append order (one writer).
    let mut cursor = Cursor::START;
    let mut keys = Vec::new();
    loop {
        let page = store
            .read_all(cursor, &ReadFilter::default(), 3)
            .await
            .unwrap();
        if page.events.is_empty() {
            break;
        }
        keys.extend(
            page.events
                .iter()
                .map(|e| e.data["key"].as_str().unwrap().to_owned()),
        );
        cursor = page.next;
    }
    let expected: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    assert_eq!(keys, expected);

    // A workspace filter returns only that workspace, and its cursor then skips the rest.
    let filter = ReadFilter {
        types: None,
        or_source_prefix: None,
        workspace: Some(ws("odd")),
        ty: None,
    };
    let page = store.read_all(Cursor::START, &filter, 100).await.unwrap();
    assert_eq!(page.events.len(), 5);
    assert!(page.events.iter().all(|e| e.workspace.as_str() == "odd"));
    let after = store
        .read_all(page.next, &ReadFilter::default(), 100)
        .await
        .unwrap();
    assert!(
        after.events.is_empty(),
        "the filtered cursor moved past everything visible"
    );

    let filter = ReadFilter {
        types: None,
        or_source_prefix: None,
        workspace: None,
        ty: Some(EventType::parse("proposal.approved.v1").unwrap()),
    };
    let page = store.read_all(Cursor::START, &filter, 100).await.unwrap();
    assert!(page.events.is_empty());
    assert!(
        page.next > Cursor::START,
        "an empty filtered read still advances"
    );

    // A set of types (a projection's): only those, in order, paged by the limit.
    let note = |i: usize| {
        switchyard_events::NewEvent::new(
            ws("even"),
            switchyard_events::Source::parse("/tests").unwrap(),
            EventType::parse("agent.message.sent.v1").unwrap(),
            switchyard_events::StreamId::parse(&format!("message/m{i}")).unwrap(),
            serde_json::json!({"message_id": format!("m{i}"), "sender": "a", "recipient": "*",
                               "type": "note", "content": i}),
        )
    };
    for i in 0..4 {
        store.append(vec![note(i)]).await.unwrap();
        store
            .append(vec![memory("even", "agent/b", &format!("x{i}"))])
            .await
            .unwrap();
    }
    let filter = ReadFilter {
        types: Some(vec![
            "agent.message.sent.v1".into(),
            "proposal.approved.v1".into(),
        ]),
        ..ReadFilter::default()
    };
    read_n(&store, Cursor::START, &ReadFilter::default(), 18).await;
    let first = store.read_all(Cursor::START, &filter, 3).await.unwrap();
    let rest = store.read_all(first.next, &filter, 3).await.unwrap();
    let contents: Vec<i64> = first
        .events
        .iter()
        .chain(&rest.events)
        .map(|e| {
            assert_eq!(e.ty.as_str(), "agent.message.sent.v1");
            e.data["content"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(contents, [0, 1, 2, 3]);
    let after = store
        .read_all(rest.next, &ReadFilter::default(), 100)
        .await
        .unwrap();
    assert!(
        after.events.is_empty(),
        "the cursor moved past the skipped types too"
    );

    // Types, or a source prefix (an agent's events whatever their type): the memory records
    // of an agent come, the /tests ones do not, the messages still do.
    let mut by_agent = memory("even", "agent/c", "from-an-agent");
    by_agent.source = switchyard_events::Source::parse("/agents/c").unwrap();
    let mut not_an_agent = memory("even", "agent/c", "from-agents-lookalike");
    not_an_agent.source = switchyard_events::Source::parse("/agentsish/c").unwrap();
    store.append(vec![by_agent, not_an_agent]).await.unwrap();
    read_n(&store, Cursor::START, &ReadFilter::default(), 20).await;
    let filter = ReadFilter {
        types: Some(vec!["agent.message.sent.v1".into()]),
        or_source_prefix: Some("/agents/".into()),
        ..ReadFilter::default()
    };
    let page = store.read_all(Cursor::START, &filter, 100).await.unwrap();
    let got: Vec<(&str, &str)> = page
        .events
        .iter()
        .map(|e| (e.ty.as_str(), e.source.as_str()))
        .collect();
    let mut expected = vec![("agent.message.sent.v1", "/tests"); 4];
    expected.push(("agent.memory.recorded.v1", "/agents/c"));
    assert_eq!(got, expected);
}
