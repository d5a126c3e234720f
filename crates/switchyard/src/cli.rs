//! Operator commands that work on the database directly: proposals and the event log.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};
use switchyard_events::{Cursor, EventType, Source, StreamId, Workspace};
use switchyard_proposals::{Decision, DecisionError, Status, decide, fold, stream};
use switchyard_store::{EventStore, ReadFilter, Wakeups};

use crate::output::{self, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum ProposalCommand {
    /// Proposals of the workspace, pending first.
    ///
    /// Example: `switchyard proposals -w demo list --status pending --output json`
    List {
        /// Only this status: pending, approved, rejected, committed, failed.
        #[arg(long)]
        status: Option<String>,
    },
    /// One proposal with its changes and history.
    ///
    /// Example: `switchyard proposals -w demo show 0193a7c2-…`
    Show {
        /// The proposal's id.
        id: String,
    },
    /// Approve a proposal (exactly the content it has now).
    ///
    /// Example: `switchyard proposals -w demo approve 0193a7c2-… --comment "looks right" --as alice`
    Approve {
        /// The proposal's id.
        id: String,
        /// A comment for the record.
        #[arg(long)]
        comment: Option<String>,
        /// Who approves (default: $USER).
        #[arg(long = "as", env = "USER")]
        by: String,
    },
    /// Reject a proposal.
    ///
    /// Example: `switchyard proposals -w demo reject 0193a7c2-… --reason "the link is intentional"`
    Reject {
        /// The proposal's id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who rejects (default: $USER).
        #[arg(long = "as", env = "USER")]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventCommand {
    /// Print events in global order, then follow new ones: one line each (`--output json`:
    /// each event's CloudEvent as a JSON line).
    ///
    /// Example: `switchyard events tail -w demo --type proposal.created.v1 --no-follow --output json`
    Tail {
        /// Only this workspace.
        #[arg(long, short)]
        workspace: Option<String>,
        /// Only this event type.
        #[arg(long = "type", short)]
        ty: Option<String>,
        /// Start after this cursor ("0" = from the beginning).
        #[arg(long, default_value = "0")]
        after: String,
        /// Stop when caught up instead of following.
        #[arg(long)]
        no_follow: bool,
    },
}

pub(crate) async fn proposals(
    store: EventStore,
    workspace: &str,
    command: ProposalCommand,
    allow_self_approval: bool,
    output: Output,
) -> anyhow::Result<()> {
    let workspace =
        Workspace::parse(workspace).map_err(|e| output::usage(format!("--workspace: {e}")))?;
    match command {
        ProposalCommand::List { status } => {
            let status = status
                .map(|s| {
                    Status::parse(&s).ok_or_else(|| {
                        output::usage(format!(
                            "unknown status {s:?} (pending, approved, rejected, committed, failed, merged, closed)"
                        ))
                    })
                })
                .transpose()?;
            let rows: Vec<(String, String, String, String)> = sqlx::query_as(
                "SELECT id, status, author, title FROM proj_proposals.proposals
                 WHERE workspace = $1 AND ($2::text IS NULL OR status = $2)
                 ORDER BY status <> 'pending', created_at DESC",
            )
            .bind(workspace.as_str())
            .bind(status.map(Status::as_str))
            .fetch_all(store.pool())
            .await
            .context("reading the proposals projection (is the server running its projections?)")?;
            let list: Vec<Value> = rows
                .iter()
                .map(|(id, status, author, title)| {
                    json!({"id": id, "status": status, "author": author, "title": title})
                })
                .collect();
            output.print(&list, || {
                if rows.is_empty() {
                    return format!("no proposals in workspace {workspace}");
                }
                rows.iter()
                    .map(|(id, status, author, title)| {
                        format!("{id}  {status:<9}  {author:<24}  {title}")
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        ProposalCommand::Show { id } => {
            let proposal = load(&store, &workspace, &id).await?;
            output.print(&proposal, || {
                serde_json::to_string_pretty(&proposal).unwrap_or_default()
            })?;
        }
        ProposalCommand::Approve { id, comment, by } => {
            let proposal = load(&store, &workspace, &id).await?;
            if !allow_self_approval && proposal.proposal["author"].as_str() == Some(by.as_str()) {
                return Err(output::usage(format!(
                    "{by} proposed {id} and may not approve it too (api.allow_self_approval is off)"
                )));
            }
            let decision = Decision::Approve {
                comment,
                content_hash: Some(proposal.content_hash.clone()),
            };
            record(&store, &workspace, &proposal, &by, decision).await?;
            output.print(
                &json!({"id": id, "decision": "approved", "by": by, "content_hash": proposal.content_hash}),
                || format!("approved {id} (content {})", proposal.content_hash),
            )?;
        }
        ProposalCommand::Reject { id, reason, by } => {
            if reason.trim().is_empty() {
                return Err(output::usage("a rejection needs a reason"));
            }
            let proposal = load(&store, &workspace, &id).await?;
            record(
                &store,
                &workspace,
                &proposal,
                &by,
                Decision::Reject {
                    reason: reason.clone(),
                },
            )
            .await?;
            output.print(
                &json!({"id": id, "decision": "rejected", "by": by, "reason": reason}),
                || format!("rejected {id}"),
            )?;
        }
    }
    Ok(())
}

async fn load(
    store: &EventStore,
    workspace: &Workspace,
    id: &str,
) -> anyhow::Result<switchyard_proposals::Proposal> {
    let missing = || {
        output::not_found(format!(
            "proposal {id} does not exist in workspace {workspace}"
        ))
    };
    let stream = StreamId::parse(&stream(id)).map_err(|_| missing())?;
    let events = store.read_stream(workspace, &stream, 0, 10_000).await?;
    fold(&events).ok_or_else(missing)
}

async fn record(
    store: &EventStore,
    workspace: &Workspace,
    proposal: &switchyard_proposals::Proposal,
    by: &str,
    decision: Decision,
) -> anyhow::Result<()> {
    let event = decide(
        proposal,
        workspace,
        &Source::parse("/cli")?,
        by,
        "cli",
        &decision,
    )
    .map_err(|e| match e {
        DecisionError::AlreadyDecided { .. } | DecisionError::HashMismatch { .. } => {
            output::conflict(e.to_string())
        }
        other => output::usage(other.to_string()),
    })?;
    match store.append(vec![event]).await {
        Ok(_) => Ok(()),
        Err(switchyard_store::Error::Conflict { .. }) => Err(output::conflict(format!(
            "proposal {} was decided concurrently; a decision is taken once",
            proposal.id
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn events(
    store: EventStore,
    command: EventCommand,
    output: Output,
) -> anyhow::Result<()> {
    let EventCommand::Tail {
        workspace,
        ty,
        after,
        no_follow,
    } = command;
    let filter = ReadFilter {
        types: None,
        or_source_prefix: None,
        workspace: workspace
            .as_deref()
            .map(Workspace::parse)
            .transpose()
            .map_err(|e| output::usage(format!("--workspace: {e}")))?,
        ty: ty
            .as_deref()
            .map(EventType::parse)
            .transpose()
            .map_err(|e| output::usage(format!("--type: {e}")))?,
    };
    let mut cursor: Cursor = after
        .parse()
        .map_err(|e| output::usage(format!("--after: {e}")))?;
    let mut wakeups = Wakeups::listen(&store).await?;
    loop {
        let page = store.read_all(cursor, &filter, 500).await?;
        for event in &page.events {
            match output {
                Output::Json => {
                    let json: Value = serde_json::to_value(event.to_cloudevent())?;
                    println!("{json}");
                }
                Output::Text => println!(
                    "{:>8}  {}  {:<16}  {:<32}  {}  {}",
                    event.position,
                    event.time.format("%Y-%m-%d %H:%M:%S%.3f"),
                    event.workspace,
                    event.ty,
                    event.stream,
                    event.id,
                ),
            }
        }
        cursor = page.next;
        if page.events.is_empty() {
            if no_follow && !page.held_back {
                return Ok(());
            }
            let wait = if page.held_back { 5 } else { 1_000 };
            wakeups.wait(Duration::from_millis(wait)).await;
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token and print it (the only time it is shown; only its SHA-256 is stored).
    ///
    /// Example: `switchyard tokens create --workspace demo --scope approve --expires 30d --name alice`
    Create {
        /// The workspace it is for; every workspace when absent.
        #[arg(long, short)]
        workspace: Option<String>,
        /// read, propose, approve or admin.
        #[arg(long)]
        scope: String,
        /// How long it works (`30d`, `12h`, `1w`); forever when absent.
        #[arg(long)]
        expires: Option<String>,
        /// Its name, recorded as the author or approver of what it does (default: $USER).
        #[arg(long, env = "USER")]
        name: String,
    },
    /// Tokens without their secrets, newest first.
    ///
    /// Example: `switchyard tokens list -w demo --output json`
    List {
        /// Only this workspace's.
        #[arg(long, short)]
        workspace: Option<String>,
    },
    /// Revoke a token at once.
    ///
    /// Example: `switchyard tokens revoke 0193a7c2-…`
    Revoke {
        /// The token's id (from `list`).
        id: uuid::Uuid,
    },
}

pub(crate) async fn tokens(
    store: EventStore,
    command: TokenCommand,
    output: Output,
) -> anyhow::Result<()> {
    let pool = store.pool();
    match command {
        TokenCommand::Create {
            workspace,
            scope,
            expires,
            name,
        } => {
            let scope = switchyard_http_api::Scope::parse(&scope)
                .ok_or_else(|| output::usage("--scope is read, propose, approve or admin"))?;
            let workspace = workspace
                .map(|w| Workspace::parse(&w))
                .transpose()
                .map_err(|e| output::usage(format!("--workspace: {e}")))?;
            let expires = expires
                .map(|e| switchyard_http_api::parse_expiry(&e))
                .transpose()
                .map_err(|e| output::usage(format!("--expires {e}")))?;
            let made =
                switchyard_http_api::create_token(pool, &name, workspace.as_ref(), scope, expires)
                    .await?;
            output.print(&made, || {
                serde_json::to_string_pretty(&made).unwrap_or_default()
            })?;
            eprintln!("Keep the token now: it is not shown again.");
        }
        TokenCommand::List { workspace } => {
            let tokens = switchyard_http_api::list_tokens(pool, workspace.as_deref()).await?;
            output.print(&tokens, || {
                tokens
                    .iter()
                    .filter_map(|t| serde_json::to_string(t).ok())
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        TokenCommand::Revoke { id } => {
            let revoked = switchyard_http_api::revoke_token(pool, id, None)
                .await?
                .ok_or_else(|| output::not_found(format!("no token {id}")))?;
            output.print(&revoked, || {
                serde_json::to_string(&revoked).unwrap_or_default()
            })?;
        }
    }
    Ok(())
}
