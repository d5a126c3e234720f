//! Acting on repositories. Agents commit through the [`GitHost`] trait; [`LocalGit`] implements
//! it on a repository on disk (with the `git` command), so everything runs without network;
//! [`GitHubHost`] on GitHub through octocrab (branch, commit, pull request).
//!
//! Invariant: a commit is idempotent by its key. A retry after a crash — or a redelivered
//! approval — finds what the first attempt did (the branch `switchyard/<key>` whose commit names
//! the key) and returns it instead of committing again.

pub mod commands;
mod host;
pub mod webhook;

use std::path::{Component, Path, PathBuf};

pub use host::{GitHubHost, HookDelivery, to_redeliver};

use futures::future::BoxFuture;
use tokio::process::Command;

/// One file's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    /// A new file; refused if it exists.
    Create {
        /// Relative path.
        path: String,
        /// Its content.
        content: String,
    },
    /// An existing file's new content; refused if it is missing.
    Modify {
        /// Relative path.
        path: String,
        /// Its content.
        content: String,
    },
    /// Removes an existing file; refused if it is missing.
    Delete {
        /// Relative path.
        path: String,
    },
}

impl FileChange {
    /// The path it touches.
    pub fn path(&self) -> &str {
        match self {
            Self::Create { path, .. } | Self::Modify { path, .. } | Self::Delete { path } => path,
        }
    }
}

/// A commit to make.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// Makes the commit idempotent (a proposal id): the branch is `switchyard/<key>`.
    pub key: String,
    /// The commit message.
    pub message: String,
    /// The changes.
    pub changes: Vec<FileChange>,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The commit.
    pub sha: String,
    /// The branch it is on.
    pub branch: String,
    /// The files it touched.
    pub files: Vec<String>,
    /// The pull request, where the host has them.
    pub pull_request_url: Option<String>,
    /// True when an earlier attempt had made it already.
    pub existing: bool,
}

/// Why a commit failed; each says what a person can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GitError {
    /// A file to create exists already.
    #[error("{0} exists already; the proposal would overwrite it")]
    Conflict(String),
    /// A path leaves the repository (`..`, absolute, or through a symlink).
    #[error("{0} is outside the repository")]
    PathOutside(String),
    /// A file to modify or delete does not exist.
    #[error("{0} does not exist in the repository")]
    MissingFile(String),
    /// The host (git, GitHub) failed; worth a retry.
    #[error("{0}")]
    Host(String),
}

/// Where commits go.
pub trait GitHost: Send + Sync + 'static {
    /// Commits `request` to the repository at `repository` (a local path, or `owner/repo`).
    fn commit<'a>(
        &'a self,
        repository: &'a str,
        request: &'a CommitRequest,
    ) -> BoxFuture<'a, Result<CommitOutcome, GitError>>;
}

/// A repository on disk, driven with the `git` command.
#[derive(Debug, Clone, Default)]
pub struct LocalGit;

async fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Switchyard",
            "-c",
            "user.email=switchyard@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .await
        .map_err(|e| GitError::Host(format!("cannot run git: {e}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(GitError::Host(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// A file's text at a revision of a repository on disk (`HEAD`, a commit, `<commit>^`):
/// `None` when the file or the revision does not exist there, or the file is not UTF-8.
/// The path must stay inside the repository (no absolute path, no `..`).
pub async fn read_at(dir: &Path, revision: &str, path: &str) -> Result<Option<String>, GitError> {
    let relative = Path::new(path);
    if path.is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(GitError::PathOutside(path.to_owned()));
    }
    if revision.starts_with('-') || revision.contains(':') {
        return Err(GitError::Host(format!("not a revision: {revision:?}")));
    }
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["cat-file", "blob"])
        .arg(format!("{revision}:{path}"))
        .output()
        .await
        .map_err(|e| GitError::Host(format!("cannot run git: {e}")))?;
    if !output.status.success() {
        return Ok(None);
    }
    Ok(String::from_utf8(output.stdout).ok())
}

/// Resolves a relative path inside `root`, refusing anything that leaves it: absolute paths,
/// `..`, and existing symlinks on the way.
fn inside(root: &Path, path: &str) -> Result<PathBuf, GitError> {
    let outside = || GitError::PathOutside(path.to_owned());
    let relative = Path::new(path);
    if path.is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(outside());
    }
    let mut current = root.to_path_buf();
    for component in relative.components() {
        current.push(component);
        if std::fs::symlink_metadata(&current).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(outside());
        }
    }
    if current.components().any(|c| c.as_os_str() == ".git") {
        return Err(outside());
    }
    Ok(current)
}

fn apply(root: &Path, change: &FileChange) -> Result<(), GitError> {
    let target = inside(root, change.path())?;
    let io = |e: std::io::Error| GitError::Host(format!("{}: {e}", change.path()));
    match change {
        FileChange::Create { content, .. } => {
            if target.exists() {
                return Err(GitError::Conflict(change.path().to_owned()));
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&target, content).map_err(io)
        }
        FileChange::Modify { content, .. } => {
            if !target.is_file() {
                return Err(GitError::MissingFile(change.path().to_owned()));
            }
            std::fs::write(&target, content).map_err(io)
        }
        FileChange::Delete { .. } => {
            if !target.is_file() {
                return Err(GitError::MissingFile(change.path().to_owned()));
            }
            std::fs::remove_file(&target).map_err(io)
        }
    }
}

impl LocalGit {
    async fn existing(repo: &Path, branch: &str, key: &str) -> Result<Option<String>, GitError> {
        let Ok(sha) = git(
            repo,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ],
        )
        .await
        else {
            return Ok(None);
        };
        let message = git(repo, &["log", "-1", "--format=%B", &sha]).await?;
        Ok(message.contains(key).then_some(sha))
    }

    async fn make(
        repo: &Path,
        branch: &str,
        request: &CommitRequest,
        tree: &Path,
    ) -> Result<String, GitError> {
        let tree_str = tree.to_string_lossy().to_string();
        git(
            repo,
            &[
                "worktree", "add", "--quiet", "-b", branch, &tree_str, "HEAD",
            ],
        )
        .await?;
        for change in &request.changes {
            apply(tree, change)?;
        }
        git(tree, &["add", "--all"]).await?;
        git(tree, &["commit", "--quiet", "-m", &request.message]).await?;
        git(tree, &["rev-parse", "HEAD"]).await
    }
}

impl GitHost for LocalGit {
    fn commit<'a>(
        &'a self,
        repository: &'a str,
        request: &'a CommitRequest,
    ) -> BoxFuture<'a, Result<CommitOutcome, GitError>> {
        Box::pin(async move {
            let repo = Path::new(repository);
            let branch = format!("switchyard/{}", request.key);
            let files: Vec<String> = request
                .changes
                .iter()
                .map(|c| c.path().to_owned())
                .collect();
            if let Some(sha) = Self::existing(repo, &branch, &request.key).await? {
                return Ok(CommitOutcome {
                    sha,
                    branch,
                    files,
                    pull_request_url: None,
                    existing: true,
                });
            }
            // A leftover branch of an attempt that died before committing: start again. Its
            // worktree, if the attempt died holding it, keeps the branch checked out and
            // `branch -D` would refuse: remove that worktree first (only that one).
            if let Ok(list) = git(repo, &["worktree", "list", "--porcelain"]).await {
                let held = format!("branch refs/heads/{branch}");
                let mut path = None;
                for line in list.lines() {
                    if let Some(p) = line.strip_prefix("worktree ") {
                        path = Some(p.to_owned());
                    } else if line == held
                        && let Some(p) = &path
                    {
                        let _ = git(repo, &["worktree", "remove", "--force", p]).await;
                    }
                }
            }
            let _ = git(repo, &["branch", "-D", &branch]).await;
            let tree = std::env::temp_dir().join(format!(
                "switchyard-worktree-{}",
                uuid::Uuid::new_v4().simple()
            ));
            let result = Self::make(repo, &branch, request, &tree).await;
            let tree_str = tree.to_string_lossy().to_string();
            let _ = git(repo, &["worktree", "remove", "--force", &tree_str]).await;
            match result {
                Ok(sha) => Ok(CommitOutcome {
                    sha,
                    branch,
                    files,
                    pull_request_url: None,
                    existing: false,
                }),
                Err(e) => {
                    let _ = git(repo, &["branch", "-D", &branch]).await;
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn repo() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sy-repo-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "--quiet", "--initial-branch=main"])
            .await
            .unwrap();
        std::fs::write(dir.join("README.md"), "# Demo\n").unwrap();
        git(&dir, &["add", "README.md"]).await.unwrap();
        git(&dir, &["commit", "--quiet", "-m", "init"])
            .await
            .unwrap();
        dir
    }

    /// A file's text at a revision; nothing for a missing file or revision; paths outside
    /// the repository and options posing as revisions are refused.
    #[tokio::test]
    async fn read_at_reads_a_revision_and_refuses_what_leaves_the_repository() {
        let dir = repo().await;
        assert_eq!(
            read_at(&dir, "HEAD", "README.md").await.unwrap().as_deref(),
            Some("# Demo\n")
        );
        assert_eq!(read_at(&dir, "HEAD", "missing.md").await.unwrap(), None);
        assert_eq!(read_at(&dir, "HEAD^", "README.md").await.unwrap(), None);
        for path in ["../README.md", "/etc/passwd", "", "a/../../b"] {
            assert!(
                matches!(
                    read_at(&dir, "HEAD", path).await,
                    Err(GitError::PathOutside(_))
                ),
                "{path:?}"
            );
        }
        for revision in ["--output=/tmp/x", "HEAD:README.md"] {
            assert!(
                read_at(&dir, revision, "README.md").await.is_err(),
                "{revision:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn request(key: &str, changes: Vec<FileChange>) -> CommitRequest {
        CommitRequest {
            key: key.into(),
            message: format!("Apply proposal {key}"),
            changes,
        }
    }

    /// An attempt killed after `worktree add -b` left its branch checked out in a worktree
    /// that still exists; the redelivery starts again instead of failing on the branch
    /// (the fault harness dead-lettered such an approval).
    #[tokio::test]
    async fn an_attempt_killed_holding_its_worktree_is_redone() {
        let dir = repo().await;
        let path = dir.to_str().unwrap();
        let left = std::env::temp_dir().join(format!("sy-left-{}", uuid::Uuid::new_v4().simple()));
        let left_str = left.to_str().unwrap();
        git(
            &dir,
            &[
                "worktree",
                "add",
                "--quiet",
                "-b",
                "switchyard/p9",
                left_str,
                "HEAD",
            ],
        )
        .await
        .unwrap();
        let changes = vec![FileChange::Create {
            path: "notes.md".into(),
            content: "note\n".into(),
        }];
        let made = LocalGit
            .commit(path, &request("p9", changes))
            .await
            .unwrap();
        assert!(!made.existing);
        let content = git(&dir, &["show", &format!("{}:notes.md", made.sha)])
            .await
            .unwrap();
        assert_eq!(content, "note");
        assert!(!left.exists(), "the dead attempt's worktree is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn commits_once_per_key_on_its_branch() {
        let dir = repo().await;
        let path = dir.to_str().unwrap();
        let changes = vec![
            FileChange::Modify {
                path: "README.md".into(),
                content: "# Demo!\n".into(),
            },
            FileChange::Create {
                path: "docs/guide.md".into(),
                content: "guide\n".into(),
            },
        ];
        let first = LocalGit
            .commit(path, &request("p1", changes.clone()))
            .await
            .unwrap();
        assert!(!first.existing);
        assert_eq!(first.branch, "switchyard/p1");
        let content = git(&dir, &["show", &format!("{}:docs/guide.md", first.sha)])
            .await
            .unwrap();
        assert_eq!(content, "guide");
        // Again (a redelivered approval): the same commit, no second one.
        let again = LocalGit
            .commit(path, &request("p1", changes))
            .await
            .unwrap();
        assert!(again.existing);
        assert_eq!(again.sha, first.sha);
        let count = git(&dir, &["rev-list", "--count", "switchyard/p1"])
            .await
            .unwrap();
        assert_eq!(count, "2", "init + one commit");
        // The working tree of the repository itself is untouched.
        assert_eq!(
            std::fs::read_to_string(dir.join("README.md")).unwrap(),
            "# Demo\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn refuses_what_it_cannot_do_and_leaves_no_branch() {
        let dir = repo().await;
        let path = dir.to_str().unwrap();
        let cases = [
            (
                FileChange::Modify {
                    path: "missing.md".into(),
                    content: "x".into(),
                },
                GitError::MissingFile("missing.md".into()),
            ),
            (
                FileChange::Delete {
                    path: "missing.md".into(),
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
                    path: "../escape.md".into(),
                    content: "x".into(),
                },
                GitError::PathOutside("../escape.md".into()),
            ),
            (
                FileChange::Create {
                    path: "/etc/x".into(),
                    content: "x".into(),
                },
                GitError::PathOutside("/etc/x".into()),
            ),
            (
                FileChange::Modify {
                    path: ".git/config".into(),
                    content: "x".into(),
                },
                GitError::PathOutside(".git/config".into()),
            ),
        ];
        for (i, (change, expected)) in cases.into_iter().enumerate() {
            let err = LocalGit
                .commit(path, &request(&format!("bad{i}"), vec![change]))
                .await
                .unwrap_err();
            assert_eq!(err, expected);
            let branch = git(&dir, &["branch", "--list", &format!("switchyard/bad{i}")])
                .await
                .unwrap();
            assert!(branch.is_empty(), "no branch left behind");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
