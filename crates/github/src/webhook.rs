//! GitHub webhook deliveries: the signature check (on the raw bytes, before anything is
//! parsed) and the mapping of a delivery to a `github.<event>.v1` event.
//!
//! Both are pure, so the HTTP route stays thin and the mapping is tested against payloads
//! shaped like GitHub's documented examples.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

/// Why a signature was refused. Every variant answers 401 and nothing is parsed or stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("X-Hub-Signature-256 is missing")]
    Missing,
    /// The header is not `sha256=<64 hex digits>`.
    #[error("X-Hub-Signature-256 is not sha256=<64 hex digits>")]
    Malformed,
    /// The signature does not match the body and the secret.
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

/// Checks `X-Hub-Signature-256` (`sha256=<hex>`): HMAC-SHA256 of exactly `body` under
/// `secret`, compared in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&[u8]>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex = header
        .strip_prefix(b"sha256=")
        .ok_or(SignatureError::Malformed)?;
    if hex.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(hex).map_err(|_| SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The signature header value GitHub would send for `body` (for tests and the stand-in).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `owner/repo`, as GitHub names it (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    /// User or organisation.
    pub owner: String,
    /// Repository.
    pub repo: String,
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.repo)
    }
}

/// What a delivery means for Switchyard.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// GitHub's `ping` on hook creation.
    Ping,
    /// An event to append in the repository's workspaces.
    Event {
        /// The repository it is about.
        repository: RepoName,
        /// `github.<event>.v1`.
        ty: String,
        /// The stream within the workspace (`github/pr/<n>`, `github/issue/<n>`, …).
        stream: String,
        /// The normalised data (see the schemas in `events/`).
        data: Value,
    },
    /// Nothing to do; recorded with the reason.
    Ignored {
        /// The repository, when the payload names one.
        repository: Option<RepoName>,
        /// Why.
        reason: String,
    },
}

/// The events Switchyard maps, with the actions it handles (`None`: events without actions).
const HANDLED: &[(&str, Option<&[&str]>)] = &[
    (
        "pull_request",
        Some(&[
            "opened",
            "reopened",
            "closed",
            "synchronize",
            "ready_for_review",
            "converted_to_draft",
            "edited",
        ]),
    ),
    ("pull_request_review", Some(&["submitted", "dismissed"])),
    ("issue_comment", Some(&["created", "edited"])),
    ("pull_request_review_comment", Some(&["created", "edited"])),
    ("check_run", Some(&["completed", "rerequested"])),
    ("workflow_run", Some(&["requested", "completed"])),
    (
        "issues",
        Some(&[
            "opened",
            "edited",
            "closed",
            "reopened",
            "labeled",
            "unlabeled",
        ]),
    ),
    ("push", None),
];

/// Longest comment or body text kept in an event; GitHub allows 65 536 characters.
const MAX_TEXT: usize = 65_536;
/// Commits of a push listed in its event (GitHub sends at most 20).
const MAX_PUSH_COMMITS: usize = 20;

fn text(v: &Value) -> Option<String> {
    v.as_str().map(|s| {
        if s.len() <= MAX_TEXT {
            s.to_owned()
        } else {
            let mut end = MAX_TEXT;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        }
    })
}

fn repository(payload: &Value) -> Option<RepoName> {
    let repo = &payload["repository"];
    let owner = repo["owner"]["login"]
        .as_str()
        .or_else(|| repo["owner"]["name"].as_str())?;
    let name = repo["name"].as_str()?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    (valid(owner) && valid(name)).then(|| RepoName {
        owner: owner.to_owned(),
        repo: name.to_owned(),
    })
}

/// Inserts the keys whose values are present (not null).
fn put(map: &mut Map<String, Value>, pairs: impl IntoIterator<Item = (&'static str, Value)>) {
    for (k, v) in pairs {
        if !v.is_null() {
            map.insert(k.to_owned(), v);
        }
    }
}

fn opt(v: Option<String>) -> Value {
    v.map_or(Value::Null, Value::String)
}

fn number(v: &Value) -> Value {
    v.as_u64().map_or(Value::Null, |n| json!(n))
}

fn pull_numbers(list: &Value) -> Value {
    let numbers: Vec<u64> = list
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["number"].as_u64()).collect())
        .unwrap_or_default();
    json!(numbers)
}

/// Maps one delivery (`X-GitHub-Event`, `X-GitHub-Delivery`, parsed body).
pub fn map(event: &str, delivery: &str, payload: &Value) -> Mapped {
    if event == "ping" {
        return Mapped::Ping;
    }
    let repo = repository(payload);
    let Some((_, actions)) = HANDLED.iter().find(|(name, _)| *name == event) else {
        return Mapped::Ignored {
            repository: repo,
            reason: format!("event {event:?} is not handled"),
        };
    };
    let action = payload["action"].as_str();
    if let Some(actions) = actions
        && !action.is_some_and(|a| actions.contains(&a))
    {
        return Mapped::Ignored {
            repository: repo,
            reason: format!(
                "action {:?} of {event} is not handled",
                action.unwrap_or("")
            ),
        };
    }
    let Some(repository) = repo else {
        return Mapped::Ignored {
            repository: None,
            reason: "the payload names no repository".into(),
        };
    };
    let mut data = Map::new();
    put(
        &mut data,
        [
            ("delivery_id", json!(delivery)),
            ("repository", json!(repository.to_string())),
            ("action", action.map_or(Value::Null, |a| json!(a))),
            ("sender", opt(text(&payload["sender"]["login"]))),
        ],
    );
    let stream = match event {
        "pull_request" => {
            let pr = &payload["pull_request"];
            put(
                &mut data,
                [
                    ("number", number(&pr["number"])),
                    ("title", opt(text(&pr["title"]))),
                    ("body", opt(text(&pr["body"]))),
                    ("author", opt(text(&pr["user"]["login"]))),
                    ("state", opt(text(&pr["state"]))),
                    (
                        "draft",
                        pr["draft"].as_bool().map_or(Value::Null, Value::Bool),
                    ),
                    ("merged", json!(pr["merged"].as_bool().unwrap_or(false))),
                    ("merge_commit_sha", opt(text(&pr["merge_commit_sha"]))),
                    ("head_sha", opt(text(&pr["head"]["sha"]))),
                    ("branch", opt(text(&pr["head"]["ref"]))),
                    ("base_branch", opt(text(&pr["base"]["ref"]))),
                    ("url", opt(text(&pr["html_url"]))),
                ],
            );
            format!("github/pr/{}", pr["number"].as_u64().unwrap_or(0))
        }
        "pull_request_review" => {
            let pr = &payload["pull_request"];
            let review = &payload["review"];
            put(
                &mut data,
                [
                    ("number", number(&pr["number"])),
                    ("review_id", number(&review["id"])),
                    ("state", opt(text(&review["state"]))),
                    ("body", opt(text(&review["body"]))),
                    ("author", opt(text(&review["user"]["login"]))),
                    ("head_sha", opt(text(&review["commit_id"]))),
                    ("branch", opt(text(&pr["head"]["ref"]))),
                    ("url", opt(text(&review["html_url"]))),
                ],
            );
            format!("github/pr/{}", pr["number"].as_u64().unwrap_or(0))
        }
        "issue_comment" => {
            let issue = &payload["issue"];
            let comment = &payload["comment"];
            let on_pull_request = issue.get("pull_request").is_some_and(|p| !p.is_null());
            put(
                &mut data,
                [
                    ("number", number(&issue["number"])),
                    ("on_pull_request", json!(on_pull_request)),
                    ("comment_id", number(&comment["id"])),
                    ("body", opt(text(&comment["body"]))),
                    ("author", opt(text(&comment["user"]["login"]))),
                    ("url", opt(text(&comment["html_url"]))),
                ],
            );
            let kind = if on_pull_request { "pr" } else { "issue" };
            format!("github/{kind}/{}", issue["number"].as_u64().unwrap_or(0))
        }
        "pull_request_review_comment" => {
            let pr = &payload["pull_request"];
            let comment = &payload["comment"];
            put(
                &mut data,
                [
                    ("number", number(&pr["number"])),
                    ("comment_id", number(&comment["id"])),
                    ("body", opt(text(&comment["body"]))),
                    ("author", opt(text(&comment["user"]["login"]))),
                    ("path", opt(text(&comment["path"]))),
                    ("line", number(&comment["line"])),
                    ("head_sha", opt(text(&comment["commit_id"]))),
                    ("branch", opt(text(&pr["head"]["ref"]))),
                    ("url", opt(text(&comment["html_url"]))),
                ],
            );
            format!("github/pr/{}", pr["number"].as_u64().unwrap_or(0))
        }
        "check_run" => {
            let run = &payload["check_run"];
            put(
                &mut data,
                [
                    ("check_run_id", number(&run["id"])),
                    ("name", opt(text(&run["name"]))),
                    ("status", opt(text(&run["status"]))),
                    ("conclusion", opt(text(&run["conclusion"]))),
                    ("head_sha", opt(text(&run["head_sha"]))),
                    ("branch", opt(text(&run["check_suite"]["head_branch"]))),
                    ("pull_requests", pull_numbers(&run["pull_requests"])),
                    ("url", opt(text(&run["html_url"]))),
                    ("details_url", opt(text(&run["details_url"]))),
                ],
            );
            format!(
                "github/commit/{}",
                run["head_sha"].as_str().unwrap_or("unknown")
            )
        }
        "workflow_run" => {
            let run = &payload["workflow_run"];
            put(
                &mut data,
                [
                    ("run_id", number(&run["id"])),
                    ("name", opt(text(&run["name"]))),
                    ("run_number", number(&run["run_number"])),
                    ("trigger", opt(text(&run["event"]))),
                    ("status", opt(text(&run["status"]))),
                    ("conclusion", opt(text(&run["conclusion"]))),
                    ("head_sha", opt(text(&run["head_sha"]))),
                    ("branch", opt(text(&run["head_branch"]))),
                    ("pull_requests", pull_numbers(&run["pull_requests"])),
                    ("url", opt(text(&run["html_url"]))),
                    ("logs_url", opt(text(&run["logs_url"]))),
                ],
            );
            format!(
                "github/commit/{}",
                run["head_sha"].as_str().unwrap_or("unknown")
            )
        }
        "issues" => {
            let issue = &payload["issue"];
            let labels: Vec<String> = issue["labels"]
                .as_array()
                .map(|a| a.iter().filter_map(|l| text(&l["name"])).collect())
                .unwrap_or_default();
            put(
                &mut data,
                [
                    ("number", number(&issue["number"])),
                    ("title", opt(text(&issue["title"]))),
                    ("body", opt(text(&issue["body"]))),
                    ("author", opt(text(&issue["user"]["login"]))),
                    ("state", opt(text(&issue["state"]))),
                    ("labels", json!(labels)),
                    ("url", opt(text(&issue["html_url"]))),
                ],
            );
            format!("github/issue/{}", issue["number"].as_u64().unwrap_or(0))
        }
        // "push"
        _ => {
            let reference = payload["ref"].as_str().unwrap_or_default();
            let commits: Vec<Value> = payload["commits"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .take(MAX_PUSH_COMMITS)
                        .map(|c| {
                            json!({
                                "id": c["id"].as_str().unwrap_or_default(),
                                "message": text(&c["message"]).unwrap_or_default(),
                                "author": c["author"]["username"].as_str()
                                    .or_else(|| c["author"]["name"].as_str()).unwrap_or_default(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            put(
                &mut data,
                [
                    ("ref", json!(reference)),
                    (
                        "branch",
                        reference
                            .strip_prefix("refs/heads/")
                            .map_or(Value::Null, |b| json!(b)),
                    ),
                    ("before", opt(text(&payload["before"]))),
                    ("head_sha", opt(text(&payload["after"]))),
                    (
                        "forced",
                        json!(payload["forced"].as_bool().unwrap_or(false)),
                    ),
                    (
                        "deleted",
                        json!(payload["deleted"].as_bool().unwrap_or(false)),
                    ),
                    ("commits", json!(commits)),
                    ("url", opt(text(&payload["compare"]))),
                ],
            );
            format!("github/ref/{reference}")
        }
    };
    Mapped::Event {
        repository,
        ty: format!("github.{event}.v1"),
        stream,
        data: Value::Object(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented test vector.
    #[test]
    fn githubs_test_vector_verifies_and_a_reserialised_body_does_not() {
        let secret = b"It's a Secret to Everybody";
        let header = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify_signature(secret, b"Hello, World!", Some(header)),
            Ok(())
        );
        assert_eq!(sign(secret, b"Hello, World!").as_bytes(), header.as_slice());
        assert_eq!(
            verify_signature(secret, b"Hello, World! ", Some(header)),
            Err(SignatureError::Mismatch)
        );

        let body = br#"{"zen": "Design for failure.",  "hook_id":1}"#;
        let signature = sign(secret, body);
        let reserialised =
            serde_json::to_vec(&serde_json::from_slice::<Value>(body).unwrap()).unwrap();
        assert_eq!(
            verify_signature(secret, body, Some(signature.as_bytes())),
            Ok(())
        );
        assert_eq!(
            verify_signature(secret, &reserialised, Some(signature.as_bytes())),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_and_missing_signatures_are_told_apart() {
        let secret = b"s";
        assert_eq!(
            verify_signature(secret, b"x", None),
            Err(SignatureError::Missing)
        );
        for bad in [
            &b"sha1=0000"[..],
            b"sha256=",
            b"sha256=zz07ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
        ] {
            assert_eq!(
                verify_signature(secret, b"x", Some(bad)),
                Err(SignatureError::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unknown_events_and_actions_are_ignored_with_a_reason() {
        let payload =
            json!({"action": "deleted", "repository": {"name": "w", "owner": {"login": "acme"}}});
        match map("label", "d1", &payload) {
            Mapped::Ignored { repository, reason } => {
                assert_eq!(repository.unwrap().to_string(), "acme/w");
                assert!(reason.contains("label"));
            }
            other => panic!("{other:?}"),
        }
        match map("issues", "d1", &payload) {
            Mapped::Ignored { reason, .. } => assert!(reason.contains("deleted"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(map("ping", "d1", &json!({"zen": "x"})), Mapped::Ping);
        let no_repo = json!({"action": "opened", "issue": {"number": 1}});
        assert!(matches!(
            map("issues", "d", &no_repo),
            Mapped::Ignored {
                repository: None,
                ..
            }
        ));
    }
}
