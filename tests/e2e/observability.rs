//! Observability end to end: `/metrics` against the real binary.

use std::time::Duration;

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{AUTH, Server, dechunk};

impl Server {
    /// `GET path` answered as text.
    async fn get_text(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    }
}

/// The value of the sample `name{labels}` (or `name` without labels); 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.rsplit_once(' ').is_some_and(|(key, _)| key == name))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_show_the_relay_lag_grow_while_paused_and_the_work_follow_on_resume() {
    let server = Server::start().await;
    server.create_workspace("metrics").await;
    let handled = "switchyard_agent_events_total{agent=\"retrospective\",outcome=\"handled\"}";
    let scrape = || async {
        let (status, text) = server.get_text("/metrics").await;
        assert_eq!(status, 200, "{text}");
        text
    };
    let first = scrape().await;
    assert!(
        first.contains(
            "switchyard_consumer_pending{agent=\"retrospective\",type=\"retrospective.trigger.v1\"}"
        ),
        "{first}"
    );
    assert!(first.contains("switchyard_process_resident_memory_bytes"));
    let handled_before = sample(&first, handled);

    let (status, paused) = server
        .request("POST", "/v1/ops/relay/pause", &[AUTH], "")
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true);
    let batch: Vec<_> = (0..5)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("m-{i}"), "source": "/tests/metrics",
                   "type": "retrospective.trigger.v1", "subject": format!("retrospective/m{i}"),
                   "data": {"retrospective_id": format!("m{i}"), "reason": "manual", "requested_by": "metrics-test"}})
        })
        .collect();
    let (status, body) = server
        .request(
            "POST",
            "/v1/workspaces/metrics/events",
            &[AUTH, ("Content-Type", "application/cloudevents-batch+json")],
            &json!(batch).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The lag grows to the five events (the watermark is the cluster's: other tests' open
    // transactions may hold them back for a moment).
    let mut paused_scrape = String::new();
    for _ in 0..100 {
        paused_scrape = scrape().await;
        if sample(&paused_scrape, "switchyard_relay_lag_events") >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sample(&paused_scrape, "switchyard_relay_lag_events") >= 5.0,
        "{paused_scrape}"
    );
    assert_eq!(sample(&paused_scrape, "switchyard_relay_paused"), 1.0);
    assert!(sample(&paused_scrape, "switchyard_relay_lag_seconds") > 0.0);
    assert!(
        paused_scrape.contains("route=\"/v1/workspaces/{ws}/events\""),
        "HTTP latency by route: {paused_scrape}"
    );
    // Nothing reaches the agent while paused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sample(&scrape().await, handled), handled_before);

    let (status, resumed) = server
        .request("POST", "/v1/ops/relay/resume", &[AUTH], "")
        .await;
    assert_eq!(status, 200, "{resumed}");
    let mut after = String::new();
    for _ in 0..100 {
        after = scrape().await;
        if sample(&after, "switchyard_relay_lag_events") == 0.0
            && sample(&after, handled) >= handled_before + 5.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&after, "switchyard_relay_lag_events"),
        0.0,
        "{after}"
    );
    assert_eq!(sample(&after, "switchyard_relay_paused"), 0.0);
    assert!(sample(&after, handled) >= handled_before + 5.0, "{after}");
    assert!(sample(&after, "switchyard_relay_published_total") >= 5.0);
    assert!(
        sample(
            &after,
            "switchyard_events_appended_total{type=\"retrospective.completed.v1\"}"
        ) >= 5.0
    );
    server.stop().await;
}
