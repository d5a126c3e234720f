//! The spec agent: looks at the workspace's repository and proposes changes it can justify from
//! the files alone, deterministically. Two kinds of finding: Markdown links to files that do
//! not exist (`broken-link`, confidence 0.9: the change removes the link and keeps its text),
//! and Markdown files with trailing whitespace (`trailing-whitespace`, confidence 0.6).
//!
//! Each finding has a stable fingerprint. The agent remembers what it proposed and what people
//! rejected (`remember`, so it survives restarts) and proposes neither again. It honours
//! `project_scope.md` at the repository root: lines `exclude: <path prefix>` put paths out of
//! scope, lines `exclude-kind: <kind>` (e.g. `broken-link`) kinds of change; the `rules` of the
//! `project_scope.md` contract (`config/artifacts.yaml`) are added to the file's. It runs on
//! `workspace.created.v1`, `git.commit.v1` and `agent.run_requested.v1` naming it, and learns
//! from `proposal.rejected.v1`.
//!
//! It acts on its retrospective action items (`agent.action_item.assigned.v1`): `avoid_kind`
//! stops it proposing a kind of change, `raise_confidence` raises the confidence a finding
//! needs. Either is remembered (`avoid-kind:<kind>`, `min-confidence`, and a line under
//! `adaptation:<item>` saying why), and reported with `agent.action_item.completed.v1`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest};
use switchyard_artifacts::{Contracts, contracts_for};
use switchyard_events::RecordedEvent;
use switchyard_proposals::{Action, Change, Draft, Finding, created_data, stream};

/// The agent.
#[derive(Debug)]
pub struct SpecAgent {
    manifest: Manifest,
    contracts: Arc<Contracts>,
}

/// Most files one run reads, to keep a run bounded on a large repository.
const MAX_FILES: usize = 5_000;
/// Most proposals one run makes.
const MAX_PROPOSALS: usize = 20;

impl SpecAgent {
    /// With its manifest, under `contracts`.
    pub fn new(contracts: Arc<Contracts>) -> Self {
        Self {
            manifest: Manifest {
                name: "spec".into(),
                version: "0.1.0".into(),
                capabilities: vec!["spec".into(), "docs".into()],
                subscribes: crate::event_types(&[
                    "workspace.created.v1",
                    "git.commit.v1",
                    "agent.run_requested.v1",
                    "proposal.rejected.v1",
                    "agent.action_item.assigned.v1",
                ]),
                emits: crate::event_types(&[
                    "proposal.created.v1",
                    "agent.action_item.completed.v1",
                ]),
                produces: Vec::new(),
                consumes: vec![SCOPE.into()],
            },
            contracts,
        }
    }
}

/// The artifact whose rules it follows.
const SCOPE: &str = "project_scope.md";

/// A Markdown link to a file that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BrokenLink {
    file: String,
    text: String,
    target: String,
}

impl BrokenLink {
    fn fingerprint(&self) -> String {
        let digest =
            Sha256::digest(format!("broken-link\0{}\0{}", self.file, self.target).as_bytes());
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

/// `[text](target)` links of a Markdown file, skipping URLs, anchors and images.
fn links(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find("](") else { break };
        let text = &after[..close];
        let tail = &after[close + 2..];
        let Some(end) = tail.find(')') else { break };
        let target = tail[..end].trim();
        let is_image = open > 0 && rest.as_bytes()[open - 1] == b'!';
        if !is_image
            && !text.contains('[')
            && !target.is_empty()
            && !target.contains("://")
            && !target.starts_with('#')
            && !target.starts_with("mailto:")
            && !target.contains(' ')
        {
            out.push((text.to_owned(), target.to_owned()));
        }
        rest = &tail[end..];
    }
    out
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir()
                && !matches!(
                    name.as_str(),
                    ".git" | "target" | "node_modules" | ".switchyard"
                )
            {
                stack.push(path);
            } else if kind.is_file() && name.ends_with(".md") {
                out.push(path);
            }
            if out.len() >= MAX_FILES {
                return out;
            }
        }
    }
    out.sort();
    out
}

/// The rules of `project_scope.md` with this prefix (`exclude:` path prefixes out of scope,
/// `exclude-kind:` kinds of change not wanted).
fn scope_rules(root: &Path, extra: &[String], prefix: &str) -> Vec<String> {
    let file = std::fs::read_to_string(root.join("project_scope.md")).unwrap_or_default();
    file.lines()
        .chain(extra.iter().map(String::as_str))
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(prefix))
        .map(|p| p.trim().trim_start_matches("./").to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Path prefixes that `project_scope.md` puts out of scope.
fn excluded(root: &Path, extra: &[String]) -> Vec<String> {
    scope_rules(root, extra, "exclude:")
}

/// The kind of finding this agent reports.
const BROKEN_LINK: &str = "broken-link";

/// The kind of the other finding.
const TRAILING_WHITESPACE: &str = "trailing-whitespace";

/// Markdown files in scope, relative, with their text.
fn scoped_markdown(root: &Path, extra: &[String]) -> Vec<(PathBuf, String, String)> {
    let excluded = excluded(root, extra);
    let mut out = Vec::new();
    for file in markdown_files(root) {
        let Ok(relative) = file.strip_prefix(root) else {
            continue;
        };
        let relative = relative.to_string_lossy().replace('\\', "/");
        if excluded.iter().any(|p| relative.starts_with(p.as_str())) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        out.push((file, relative, text));
    }
    out
}

/// Files with lines that end in spaces or tabs: (file, the text without them).
fn find_trailing_whitespace(root: &Path, extra: &[String]) -> Vec<(String, String, String)> {
    if scope_rules(root, extra, "exclude-kind:")
        .iter()
        .any(|k| k == TRAILING_WHITESPACE)
    {
        return Vec::new();
    }
    let mut found = Vec::new();
    for (_, relative, text) in scoped_markdown(root, extra) {
        let fixed: String = text
            .split_inclusive('\n')
            .map(|line| {
                let (body, end) = match line.strip_suffix('\n') {
                    Some(body) => (body, "\n"),
                    None => (line, ""),
                };
                format!("{}{end}", body.trim_end_matches([' ', '\t']))
            })
            .collect();
        if fixed != text {
            let digest =
                Sha256::digest(format!("{TRAILING_WHITESPACE}\0{relative}\0{text}").as_bytes());
            let fingerprint: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            found.push((relative, fixed, fingerprint));
        }
    }
    found
}

fn find_broken_links(root: &Path, extra: &[String]) -> Vec<BrokenLink> {
    if scope_rules(root, extra, "exclude-kind:")
        .iter()
        .any(|k| k == BROKEN_LINK)
    {
        return Vec::new();
    }
    let mut found = Vec::new();
    for (file, relative, text) in scoped_markdown(root, extra) {
        let dir = file.parent().unwrap_or(root);
        for (label, target) in links(&text) {
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() {
                continue;
            }
            let resolved = if let Some(absolute) = path.strip_prefix('/') {
                root.join(absolute)
            } else {
                dir.join(path)
            };
            if !resolved.exists() {
                found.push(BrokenLink {
                    file: relative.clone(),
                    text: label,
                    target,
                });
            }
        }
    }
    found
}

impl SpecAgent {
    async fn run(&self, ctx: &mut Context<'_>, event: &RecordedEvent) -> Result<(), HandlerError> {
        let repository: Option<Value> = sqlx::query_scalar(
            "SELECT data->'repository' FROM events WHERE workspace = $1 AND stream_id = 'workspace' AND stream_version = 1",
        )
        .bind(event.workspace.as_str())
        .fetch_optional(ctx.connection())
        .await?;
        let repository = repository.unwrap_or(Value::Null);
        let Some(root) = repository["path"]
            .as_str()
            .filter(|_| repository["kind"] == "local")
        else {
            return Ok(()); // only local repositories are read today
        };
        let root = PathBuf::from(root);
        // One run at a time per workspace (until the first commits): two runs at once, say on
        // workspace.created and a run request, would both find nothing remembered and propose
        // the same findings twice.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("switchyard.spec.{}", event.workspace))
            .execute(ctx.connection())
            .await?;
        let contracts =
            contracts_for(ctx.connection(), &self.contracts, event.workspace.as_str()).await?;
        let rules = contracts
            .get(SCOPE)
            .map(|c| c.rules.clone())
            .unwrap_or_default();
        let min_confidence = ctx
            .recall("min-confidence")
            .await?
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        let mut drafts = Vec::new();
        for finding in find_broken_links(&root, &rules) {
            let Ok(content) = std::fs::read_to_string(root.join(&finding.file)) else {
                continue;
            };
            let link = format!("[{}]({})", finding.text, finding.target);
            let fixed = content.replace(&link, &finding.text);
            if fixed == content {
                continue;
            }
            drafts.push(Draft {
                title: format!(
                    "Remove the dead link to {} from {}",
                    finding.target, finding.file
                ),
                description: format!(
                    "{} links to `{}`, which does not exist in the repository. This keeps the link's text and drops the link.",
                    finding.file, finding.target
                ),
                changes: vec![Change {
                    path: finding.file.clone(),
                    action: Action::Modify,
                    content: Some(fixed),
                }],
                rationale: Some(format!(
                    "`{}` resolves to no file relative to `{}`.",
                    finding.target, finding.file
                )),
                confidence: Some(0.9),
                finding: Some(Finding {
                    fingerprint: finding.fingerprint(),
                    kind: BROKEN_LINK.into(),
                }),
            });
        }
        for (file, fixed, fingerprint) in find_trailing_whitespace(&root, &rules) {
            drafts.push(Draft {
                title: format!("Strip trailing whitespace from {file}"),
                description: format!(
                    "Lines of {file} end in spaces or tabs. This removes them and changes nothing else."
                ),
                changes: vec![Change {
                    path: file.clone(),
                    action: Action::Modify,
                    content: Some(fixed),
                }],
                rationale: Some("Trailing whitespace shows up as noise in diffs.".into()),
                confidence: Some(0.6),
                finding: Some(Finding {
                    fingerprint,
                    kind: TRAILING_WHITESPACE.into(),
                }),
            });
        }
        let mut proposed = 0;
        for draft in drafts {
            let Some(finding) = draft.finding.clone() else {
                continue;
            };
            let fingerprint = &finding.fingerprint;
            if draft.confidence.unwrap_or(1.0) < min_confidence
                || ctx
                    .recall(&format!("avoid-kind:{}", finding.kind))
                    .await?
                    .is_some()
                || ctx
                    .recall(&format!("rejected:{fingerprint}"))
                    .await?
                    .is_some()
                || ctx
                    .recall(&format!("proposed:{fingerprint}"))
                    .await?
                    .is_some()
            {
                continue;
            }
            // One proposal per finding and workspace, whatever runs at once: the id comes from
            // the fingerprint, and the stream must not exist yet. A second run in the same
            // transaction (two events of one batch) conflicts on the stream, and is run again
            // alone, when it finds the first one's memory.
            let digest =
                Sha256::digest(format!("{}\0{fingerprint}", event.workspace.as_str()).as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            let id = uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string();
            let invalid = |e: switchyard_events::InvalidId| HandlerError::new(e.to_string());
            let mut created = switchyard_events::NewEvent::new(
                event.workspace.clone(),
                switchyard_events::Source::parse("/agents/spec").map_err(invalid)?,
                switchyard_events::EventType::parse("proposal.created.v1").map_err(invalid)?,
                switchyard_events::StreamId::parse(&stream(&id)).map_err(invalid)?,
                created_data(&id, "spec", &draft),
            );
            created.expected_version = switchyard_events::ExpectedVersion::NoStream;
            ctx.emit_event(created)?;
            ctx.remember(&format!("proposed:{fingerprint}"), json!(id))?;
            proposed += 1;
            if proposed >= MAX_PROPOSALS {
                break;
            }
        }
        Ok(())
    }

    /// Acts on an action item from a retrospective and reports it done, saying in its memory
    /// what changed and why.
    async fn adapt(
        &self,
        ctx: &mut Context<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let data = &event.data;
        if data["agent"] != "spec" {
            return Ok(());
        }
        let item = data["action_item_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let action = &data["action"];
        let rate = action["approval_rate"].as_f64().unwrap_or_default();
        let target = action["target"].as_f64().unwrap_or_default();
        let why = format!(
            "approval rate {:.0}% below the {:.0}% target (retrospective {})",
            rate * 100.0,
            target * 100.0,
            data["retrospective_id"].as_str().unwrap_or_default()
        );
        let (status, outcome) = match (
            action["kind"].as_str(),
            action["finding_kind"].as_str(),
            action["min_confidence"].as_f64(),
        ) {
            (Some("avoid_kind"), Some(kind), _) => {
                ctx.remember(
                    &format!("avoid-kind:{kind}"),
                    json!({"action_item": item, "why": why}),
                )?;
                ("done", format!("No longer proposes {kind} changes: {why}."))
            }
            (Some("raise_confidence"), _, Some(threshold)) => {
                let current = ctx
                    .recall("min-confidence")
                    .await?
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0);
                let threshold = threshold.clamp(0.0, 1.0).max(current);
                ctx.remember("min-confidence", json!(threshold))?;
                (
                    "done",
                    format!(
                        "Proposes only findings with confidence of at least {threshold:.2}: {why}."
                    ),
                )
            }
            _ => (
                "dropped",
                format!("The spec agent cannot act on {}.", action["kind"]),
            ),
        };
        ctx.remember(&format!("adaptation:{item}"), json!(outcome))?;
        ctx.emit(
            "agent.action_item.completed.v1",
            &format!("agent/spec/action-items/{item}"),
            json!({
                "action_item_id": item, "retrospective_id": data["retrospective_id"],
                "agent": "spec", "outcome": outcome, "status": status,
            }),
        )
    }

    /// A rejected finding is remembered, so it is not proposed again.
    async fn learn(
        &self,
        ctx: &mut Context<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let Some(id) = event.data["proposal_id"].as_str() else {
            return Ok(());
        };
        // NULL for a proposal that addresses no finding (one made by a person).
        let finding: Option<Value> = sqlx::query_scalar::<_, Option<Value>>(
            "SELECT data->'finding' FROM events WHERE workspace = $1 AND stream_id = $2 AND type = 'proposal.created.v1'",
        )
        .bind(event.workspace.as_str())
        .bind(stream(id))
        .fetch_optional(ctx.connection())
        .await?
        .flatten();
        if let Some(fingerprint) = finding.as_ref().and_then(|f| f["fingerprint"].as_str()) {
            let reason = event.data["reason"].clone();
            ctx.remember(&format!("rejected:{fingerprint}"), reason)?;
        }
        Ok(())
    }
}

impl Agent for SpecAgent {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            match event.ty.as_str() {
                "proposal.rejected.v1" => self.learn(ctx, event).await,
                "agent.action_item.assigned.v1" => self.adapt(ctx, event).await,
                "agent.run_requested.v1" if event.data["agent"] != "spec" => Ok(()),
                _ => self.run(ctx, event).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_relative_links_only() {
        let md = "See [setup](docs/setup.md), [site](https://x.y), ![img](a.png), [top](#top) and [api](docs/api.md#routes).";
        let found: Vec<String> = links(md).into_iter().map(|(_, t)| t).collect();
        assert_eq!(found, ["docs/setup.md", "docs/api.md#routes"]);
    }

    #[test]
    fn reports_dead_links_outside_excluded_paths() {
        let root = std::env::temp_dir().join(format!("sy-spec-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(root.join("vendor")).unwrap();
        std::fs::write(
            root.join("README.md"),
            "[ok](docs/api.md) [dead](docs/setup.md)",
        )
        .unwrap();
        std::fs::write(
            root.join("docs/api.md"),
            "[up](../README.md) [gone](old.md)",
        )
        .unwrap();
        std::fs::write(root.join("vendor/x.md"), "[gone](nowhere.md)").unwrap();
        std::fs::write(root.join("project_scope.md"), "- exclude: vendor/\n").unwrap();
        let found = find_broken_links(&root, &[]);
        let pairs: Vec<(&str, &str)> = found
            .iter()
            .map(|f| (f.file.as_str(), f.target.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("README.md", "docs/setup.md"), ("docs/api.md", "old.md")]
        );
        assert_ne!(found[0].fingerprint(), found[1].fingerprint());
        assert_eq!(
            found[0].fingerprint(),
            find_broken_links(&root, &[])[0].fingerprint(),
            "stable"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
