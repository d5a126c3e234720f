//! The dashboard in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`), against the real server. Screenshots of every page go to
//! `<target>/tmp/dashboard-screenshots/` (not committed).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::{AUTH, Server};

/// Long enough for a debug build on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(30);

/// A chromedriver and one Chromium session; both killed on drop.
struct Browser {
    client: Client,
    _driver: Child,
    _profile: tempdir::Dir,
    base: String,
    shots: PathBuf,
}

mod tempdir {
    /// A directory removed on drop.
    pub(super) struct Dir(pub(super) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

impl Browser {
    async fn start(base: &str, test: &str) -> Self {
        let driver_path = find_program(&["chromedriver"]).expect(
            "chromedriver not found: install Debian's chromium and chromium-driver \
             (scripts/test installs them)",
        );
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let webdriver = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("sy-chromium-{}", uuid::Uuid::new_v4().simple()));
        let mut options = json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if let Some(binary) = find_program(&["chromium", "chromium-browser", "google-chrome"]) {
            options["binary"] = json!(binary);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .expect("a Chromium session");
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("dashboard-screenshots")
            .join(test);
        std::fs::create_dir_all(&shots).unwrap();
        Self {
            client,
            _driver: driver,
            _profile: tempdir::Dir(profile),
            base: base.to_owned(),
            shots,
        }
    }

    /// Waits for an element; on timeout saves a screenshot and fails with the page's text.
    async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .every(Duration::from_millis(100))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                self.shot("failure").await;
                let text = self
                    .client
                    .execute("return document.body.innerText", vec![])
                    .await
                    .unwrap_or_default();
                panic!("no {css} within {WAIT:?}: {e}\npage: {text}");
            }
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn shot(&self, name: &str) {
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(self.shots.join(format!("{name}.png")), png);
        }
    }

    /// Navigates inside the page (the hash), as a click on a link does: no reload.
    async fn open(&self, hash: &str) {
        self.client
            .execute("location.hash = arguments[0]", vec![json!(hash)])
            .await
            .unwrap();
    }

    async fn sign_in(&self, token: &str) {
        self.client.goto(&self.base).await.unwrap();
        self.wait_for("#token")
            .await
            .send_keys(token)
            .await
            .unwrap();
        self.wait_for("#signin").await.click().await.unwrap();
        self.wait_for("header.top:not([hidden]) #who").await;
    }

    /// Marks this page; [`Browser::same_page`] is true until it reloads.
    async fn mark(&self, mark: &str) {
        self.client
            .execute("window.__switchyardMark = arguments[0]", vec![json!(mark)])
            .await
            .unwrap();
    }

    async fn same_page(&self, mark: &str) -> bool {
        self.client
            .execute("return window.__switchyardMark || null", vec![])
            .await
            .unwrap()
            == json!(mark)
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// A git repository with one commit and nothing for the spec agent to find.
fn repository() -> PathBuf {
    let repo = std::env::temp_dir().join(format!("sy-e2e-dash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}");
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(
        repo.join("NOTES.md"),
        "# Notes\n\nFirst line.\nSecond line.\n",
    )
    .unwrap();
    git(&["add", "NOTES.md"]);
    git(&["commit", "--quiet", "-m", "init"]);
    repo
}

/// A new token (the secret) named `name` with `scope`, for every workspace.
async fn token(server: &Server, name: &str, scope: &str) -> String {
    let (status, made) = server
        .request(
            "POST",
            "/v1/tokens",
            &[AUTH, ("Content-Type", "application/json")],
            &json!({"name": name, "scope": scope}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    made["token"].as_str().unwrap().to_owned()
}

async fn propose(server: &Server, token: &str, workspace: &str) -> Value {
    let draft = json!({
        "title": "Say more in the notes",
        "description": "The second line says too little.",
        "changes": [{"path": "NOTES.md", "action": "modify",
                     "content": "# Notes\n\nFirst line.\nA better second line.\n"}]
    });
    let (status, created) = server
        .request(
            "POST",
            &format!("/v1/workspaces/{workspace}/proposals"),
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Content-Type", "application/json"),
            ],
            &draft.to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_a_proposal_live_approves_it_and_the_commit_arrives_live() {
    let repo = repository();
    let server = Server::start().await;
    server
        .create_workspace_with("dash", json!({"kind": "local", "path": repo}))
        .await;
    let approver = token(&server, "alice", "approve").await;
    let proposer = token(&server, "bot", "propose").await;
    let browser = Browser::start(&format!("http://{}/", server.address), "live").await;

    // Tab A follows the timeline.
    browser.sign_in(&approver).await;
    browser.open("#/timeline").await;
    browser.wait_for("h1 [data-live='on']").await;
    browser.mark("A").await;
    let tab_a = browser.client.window().await.unwrap();

    // Tab B (its own session storage: signed in again) waits on the proposals page.
    let tab_b = browser.client.new_window(true).await.unwrap().handle;
    browser
        .client
        .switch_to_window(tab_b.clone())
        .await
        .unwrap();
    browser.sign_in(&approver).await;
    browser.open("#/proposals").await;
    browser.wait_for("h1 [data-live='on']").await;
    browser.mark("B").await;

    // A proposal arrives through the API and shows up without a reload.
    let created = propose(&server, &proposer, "dash").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let row = browser
        .wait_for(&format!("tr[data-id='{id}'][data-status='pending']"))
        .await;
    assert!(browser.same_page("B").await, "the proposals page reloaded");
    browser.shot("proposals").await;

    // Its page shows the diff against the repository, and the approve button.
    row.click().await.unwrap();
    let approve = browser.wait_for("#decision [data-action='approve']").await;
    let added = browser.wait_for(".diff .add").await;
    assert_eq!(added.text().await.unwrap(), "+A better second line.");
    let removed = browser
        .client
        .find_all(Locator::Css(".diff .del"))
        .await
        .unwrap();
    let mut removed_text = Vec::new();
    for line in removed {
        removed_text.push(line.text().await.unwrap());
    }
    assert_eq!(removed_text, ["-Second line."]);
    browser.shot("proposal").await;
    browser
        .wait_for("#decision-reason")
        .await
        .send_keys("Reads better")
        .await
        .unwrap();
    approve.click().await.unwrap();
    // The page follows the proposal's stream: the commit shows up on it without a reload.
    let sha = browser.wait_for("#commit-sha").await.text().await.unwrap();
    assert_eq!(sha.len(), 40, "a commit sha: {sha}");
    assert!(browser.same_page("B").await, "the proposal page reloaded");
    browser.shot("proposal-committed").await;

    // Tab A saw the decision and the commit arrive, without reloading.
    browser.client.switch_to_window(tab_a).await.unwrap();
    let commit_row = browser
        .wait_for("#timeline-rows tr.fresh[data-type='git.commit.v1']")
        .await;
    browser
        .wait_for("#timeline-rows tr.fresh[data-type='proposal.approved.v1']")
        .await;
    assert!(browser.same_page("A").await, "the timeline reloaded");
    assert_eq!(
        browser
            .count("#timeline-rows tr[data-type='git.commit.v1']")
            .await,
        1,
        "the commit is shown once"
    );

    // Its causation chain: created → approved → commit, as a tree.
    commit_row.click().await.unwrap();
    browser
        .wait_for("#event-detail ul.tree li ul li ul li button.current")
        .await;
    let chain = browser
        .client
        .execute(
            // The path from the root of the correlation down to the chosen event.
            "const path = [];
             for (let li = document.querySelector('#event-detail ul.tree button.current')
                      .closest('li'); li; li = li.parentElement.closest('li')) {
                 path.unshift(li.querySelector(':scope > button').firstChild.textContent.trim());
             }
             return path",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        chain,
        json!([
            "proposal.created.v1",
            "proposal.approved.v1",
            "git.commit.v1"
        ])
    );
    browser.shot("timeline").await;

    // What the store holds: one decision, through the dashboard, by alice; one commit.
    let mut db = server.db().await;
    let stream: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT type, data->>'channel', data->>'approved_by' FROM events
         WHERE workspace = 'dash' AND stream_id = $1 ORDER BY stream_version",
    )
    .bind(format!("proposal/{id}"))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        stream,
        [
            ("proposal.created.v1".to_owned(), None, None),
            (
                "proposal.approved.v1".to_owned(),
                Some("dashboard".to_owned()),
                Some("alice".to_owned())
            ),
            ("git.commit.v1".to_owned(), None, None),
        ]
    );

    let created_at: i64 = sqlx::query_scalar(
        "SELECT position FROM events WHERE workspace = 'dash' AND stream_id = $1 AND stream_version = 1",
    )
    .bind(format!("proposal/{id}"))
    .fetch_one(&mut db)
    .await
    .unwrap();

    // The roster counts the git agent's one commit here; the diff is now against the
    // commit's parent, and still the same change.
    let (status, git) = server
        .request("GET", "/v1/workspaces/dash/agents/git", &[AUTH], "")
        .await;
    assert_eq!(status, 200, "{git}");
    assert_eq!(git["emitted"], 1, "{git}");
    assert_eq!(git["failed"], 0, "{git}");
    assert!(git["last_handled"].is_string(), "{git}");
    assert_eq!(git["subscribes"], json!(["proposal.approved.v1"]));
    let (status, diff) = server
        .request(
            "GET",
            &format!("/v1/workspaces/dash/proposals/{id}/diff"),
            &[AUTH],
            "",
        )
        .await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(diff["base"], format!("{sha}^"));
    assert_eq!(
        (
            diff["files"][0]["added"].as_i64(),
            diff["files"][0]["removed"].as_i64()
        ),
        (Some(1), Some(1))
    );

    // Every page renders (a screenshot of each), at a laptop's width and a phone's.
    let pages = [
        ("agents", "#/agents".to_owned()),
        ("agent-git", "#/agents/git".to_owned()),
        ("artifacts", "#/artifacts".to_owned()),
        ("retrospectives", "#/retrospectives".to_owned()),
        ("workflows", "#/workflows".to_owned()),
        ("ops", "#/ops".to_owned()),
        ("event", format!("#/event/{created_at}")),
        ("proposals-list", "#/proposals".to_owned()),
    ];
    for (name, hash) in &pages {
        browser.open(hash).await;
        let h1 = browser.wait_for("main h1").await.text().await.unwrap();
        assert_ne!(h1, "Something went wrong", "{name}");
        assert_ne!(h1, "", "{name}");
        browser.shot(name).await;
    }
    browser.client.set_window_size(390, 844).await.unwrap();
    for (name, hash) in [
        ("phone-timeline", "#/timeline".to_owned()),
        ("phone-proposal", format!("#/proposals/{id}")),
    ] {
        browser.open(&hash).await;
        browser.wait_for("main h1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        browser.shot(name).await;
    }
    // The ops page is an admin's: alice's approve token has no link to it.
    assert_eq!(
        browser
            .count("#nav li[data-needs='ops']:not([hidden])")
            .await,
        0
    );

    browser.close().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(repo);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_token_sees_no_approve_button_and_the_server_refuses_it_anyway() {
    let repo = repository();
    let server = Server::start().await;
    server
        .create_workspace_with("dash", json!({"kind": "local", "path": repo}))
        .await;
    let viewer = token(&server, "viewer", "read").await;
    let proposer = token(&server, "bot", "propose").await;
    let created = propose(&server, &proposer, "dash").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let browser = Browser::start(&format!("http://{}/", server.address), "read-only").await;

    // A token that is not valid is told so, and nothing opens.
    browser.client.goto(&browser.base).await.unwrap();
    browser
        .wait_for("#token")
        .await
        .send_keys("sy_not_a_token_0123456789abcdef")
        .await
        .unwrap();
    browser.wait_for("#signin").await.click().await.unwrap();
    let error = browser.wait_for("#login-error:not(:empty)").await;
    assert!(error.text().await.unwrap().contains("not valid"));
    browser.shot("login-refused").await;

    browser.sign_in(&viewer).await;
    browser.open(&format!("#/proposals/{id}")).await;
    let note = browser.wait_for("#decision #no-decision").await;
    assert!(note.text().await.unwrap().contains("read"));
    assert_eq!(browser.count("[data-action='approve']").await, 0);
    assert_eq!(browser.count("[data-action='reject']").await, 0);
    browser.shot("proposal-read-only").await;

    // The token is in the tab's session storage only: not in the URL, not in a cookie.
    let url = browser.client.current_url().await.unwrap();
    assert!(!url.as_str().contains(&viewer), "{url}");
    let cookies = browser
        .client
        .execute("return document.cookie", vec![])
        .await
        .unwrap();
    assert_eq!(cookies, json!(""));

    // The same approval, asked of the API with that token, is refused and changes nothing.
    let (status, body) = server
        .request(
            "POST",
            &format!("/v1/workspaces/dash/proposals/{id}/approve"),
            &[
                ("Authorization", &format!("Bearer {viewer}")),
                ("Content-Type", "application/json"),
                ("X-Switchyard-Channel", "dashboard"),
            ],
            "{}",
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let approvals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE workspace = 'dash' AND type = 'proposal.approved.v1'",
    )
    .fetch_one(&mut server.db().await)
    .await
    .unwrap();
    assert_eq!(approvals, 0);

    // Signing out forgets the token: a reload shows the sign-in form again.
    browser.wait_for("#signout").await.click().await.unwrap();
    browser.client.refresh().await.unwrap();
    browser.wait_for("#token").await;

    browser.close().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(repo);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_is_drawn_as_a_graph_and_an_escalation_is_resolved_from_its_page() {
    use crate::workflows::{Fixture, task};

    let fixture = Fixture::new();
    let server = fixture.server().await;
    let plan = json!({
        "id": "drawn", "title": "A change the reviewer never likes",
        "tasks": [
            {"id": "feature", "title": "Implement the export", "role": "coder",
             "review": {"reviewer_role": "reviewer", "max_cycles": 1}},
            {"id": "docs", "title": "Document the export", "role": "coder",
             "depends_on": ["feature"]},
        ],
    });
    let (status, made) = server.submit_plan(&plan).await;
    assert_eq!(status, 201, "{made}");
    server
        .wait_plan("drawn", 90, |p| task(p, "feature")["status"] == "escalated")
        .await;

    let browser = Browser::start(&format!("http://{}/", server.address), "workflows").await;
    browser.sign_in(crate::TOKEN).await;
    browser.open("#/workflows").await;
    browser.wait_for("tr[data-plan='drawn']").await;
    browser.shot("workflows").await;
    browser.open("#/workflows/drawn").await;
    browser.wait_for("[data-live='on']").await;
    browser.mark("plan").await;
    // The graph: both tasks, the escalated one marked, its review counter, the dependency.
    browser
        .wait_for("svg.graph g.s-escalated[data-task='feature']")
        .await;
    browser
        .wait_for("svg.graph g.s-waiting[data-task='docs']")
        .await;
    assert_eq!(browser.count("svg.graph path.dep").await, 1);
    // It ends in an arrowhead at the task that waits.
    assert_eq!(
        browser
            .count("svg.graph path.dep[marker-end='url(#arrow-dep)']")
            .await,
        1
    );
    assert_eq!(
        browser.count("svg.graph marker#arrow-dep path.head").await,
        1
    );
    let label = browser
        .client
        .execute(
            "return document.querySelector(\"svg.graph g[data-task='feature']\").textContent",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        label.as_str().unwrap().contains("review cycle 1 of 1"),
        "{label}"
    );
    browser.shot("workflow-escalated").await;

    // Skip it from the page: the dependant runs, and the page shows it done, live.
    browser
        .wait_for("#escalations [data-escalated='feature'] [data-action='skip']")
        .await
        .click()
        .await
        .unwrap();
    browser
        .wait_for("svg.graph g.s-skipped[data-task='feature']")
        .await;
    browser
        .wait_for("svg.graph g.s-done[data-task='docs']")
        .await;
    browser
        .wait_for("#plan .badge[data-status='succeeded']")
        .await;
    assert!(browser.same_page("plan").await, "the plan page reloaded");
    assert_eq!(browser.count("#escalations").await, 0);
    browser.shot("workflow-done").await;

    let mut db = server.db().await;
    let resolved: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT data->>'action', data->>'task_id' FROM events
         WHERE workspace = 'wf' AND type = 'task.resolved.v1'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        resolved,
        [(Some("skip".to_owned()), Some("feature".to_owned()))]
    );

    browser.close().await;
    server.stop().await;
}
