//! The GitHub host against a local stand-in for GitHub's REST API (these machines cannot reach
//! GitHub): the right calls in the right order, and nothing made twice on a retry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use switchyard_github::{CommitRequest, FileChange, GitError, GitHost, GitHubHost};
use switchyard_testkit::GitHubStandIn;

fn request(key: &str, changes: Vec<FileChange>) -> CommitRequest {
    CommitRequest {
        key: key.into(),
        message: format!("Fix the docs\n\nProposal: {key}\n"),
        changes,
    }
}

#[tokio::test]
async fn a_commit_is_a_branch_a_commit_and_a_pull_request_made_once() {
    let github = GitHubStandIn::start(&["README.md", "docs/old.md"]).await;
    let host = GitHubHost::new(&github.url, "test-token".to_owned().into()).unwrap();
    let changes = vec![
        FileChange::Modify {
            path: "README.md".into(),
            content: "# New\n".into(),
        },
        FileChange::Create {
            path: "docs/new.md".into(),
            content: "new\n".into(),
        },
        FileChange::Delete {
            path: "docs/old.md".into(),
        },
    ];
    let first = host
        .commit("acme/widgets", &request("p1", changes.clone()))
        .await
        .unwrap();
    assert!(!first.existing);
    assert_eq!(first.branch, "switchyard/p1");
    assert_eq!(first.sha.len(), 40);
    assert_eq!(
        first.pull_request_url.as_deref(),
        Some("https://github.example/acme/widgets/pull/1")
    );
    assert_eq!(
        github.calls(),
        [
            "GET /repos/acme/widgets",
            "GET /repos/acme/widgets/git/ref/heads/switchyard/p1",
            "GET /repos/acme/widgets/git/ref/heads/main",
            "GET /repos/acme/widgets/git/commits/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "GET /repos/acme/widgets/contents/README.md",
            "GET /repos/acme/widgets/contents/docs/new.md",
            "GET /repos/acme/widgets/contents/docs/old.md",
            "POST /repos/acme/widgets/git/trees",
            "POST /repos/acme/widgets/git/commits",
            "POST /repos/acme/widgets/git/refs",
            "GET /repos/acme/widgets/pulls",
            "POST /repos/acme/widgets/pulls",
        ]
    );

    // A redelivered approval: found, nothing made again.
    let before = github.calls().len();
    let again = host
        .commit("acme/widgets", &request("p1", changes))
        .await
        .unwrap();
    assert!(again.existing);
    assert_eq!(
        (again.sha.as_str(), again.pull_request_url.as_deref()),
        (first.sha.as_str(), first.pull_request_url.as_deref())
    );
    let retry_calls = &github.calls()[before..];
    assert!(
        retry_calls.iter().all(|c| c.starts_with("GET")),
        "no second branch, commit or pull request: {retry_calls:?}"
    );
    let repo = github.repo.lock().unwrap();
    assert_eq!(
        (repo.refs.len(), repo.commits.len(), repo.pulls.len()),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn refusals_name_the_file_and_write_nothing() {
    let github = GitHubStandIn::start(&["README.md"]).await;
    let host = GitHubHost::new(&github.url, "test-token".to_owned().into()).unwrap();
    let cases = [
        (
            FileChange::Modify {
                path: "missing.md".into(),
                content: "x".into(),
            },
            GitError::MissingFile("missing.md".into()),
        ),
        (
            FileChange::Create {
                path: "README.md".into(),
                content: "x".into(),
            },
            GitError::Conflict("README.md".into()),
        ),
        (
            FileChange::Create {
                path: "../x.md".into(),
                content: "x".into(),
            },
            GitError::PathOutside("../x.md".into()),
        ),
    ];
    for (i, (change, expected)) in cases.into_iter().enumerate() {
        let err = host
            .commit("acme/widgets", &request(&format!("bad{i}"), vec![change]))
            .await
            .unwrap_err();
        assert_eq!(err, expected);
    }
    assert!(
        github.calls().iter().all(|c| c.starts_with("GET")),
        "nothing written"
    );
    let err = host
        .commit("acme/nothing", &request("x", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Host(_)), "{err:?}");
}
