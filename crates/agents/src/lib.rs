//! Switchyard's built-in agents, one module each. Each is an ordinary
//! [`Agent`](switchyard_agent_runtime::Agent): a manifest and a handler, with no privileges
//! beyond what its manifest declares.

mod coach;
mod git;
mod github;
mod ledger;
mod orchestrator;
mod retrospective;
mod runner;
mod schedule;
mod spec;
mod strategy;

use std::sync::Arc;

use switchyard_agent_runtime::Agent;

pub use coach::{CHECKLIST, CoachAgent};
pub use git::GitAgent;
pub use github::{CI_FIXER_ROLE, DeadLetterHandle, DeadLetters, GitHubAgent};
pub use orchestrator::{Orchestrator, OrchestratorConfig, time_out_silent_runs, watch_deadlines};
pub use retrospective::{REPORT, Retrospective, RetrospectiveConfig};
pub use runner::{Limits, RoleConfig, RunnerAgent, WorkflowsConfig, runners};
pub use schedule::{fire, parse_schedule, schedule_retrospectives, scheduled_trigger};
pub use spec::SpecAgent;
pub use strategy::{MILESTONES, StrategyAgent};

/// Event types for a manifest, from literals (an invalid literal is left out).
pub(crate) fn event_types(names: &[&str]) -> Vec<switchyard_events::EventType> {
    names
        .iter()
        .filter_map(|t| switchyard_events::EventType::parse(t).ok())
        .collect()
}

/// The artifact contracts and how the artifact agents behave.
#[derive(Debug, Clone)]
pub struct ArtifactAgents {
    /// `config/artifacts.yaml`, or the operator's file.
    pub contracts: Arc<switchyard_artifacts::Contracts>,
    /// Retrospectives: schedule and judgement.
    pub retrospectives: RetrospectiveConfig,
    /// A decision waiting longer than this gets a nudge from the coach.
    pub stale_after: std::time::Duration,
}

/// Every built-in agent, as the server runs them; `github` is the GitHub client when the
/// server has a token, `dead_letters` where the runtime's retry is plugged in once it runs,
/// `workflows` the orchestrator's timing and the runner roles (one runner agent each),
/// `artifacts` the contracts and the settings of the strategy, coach and retrospective agents.
pub fn builtin(
    github: Option<Arc<switchyard_github::GitHubHost>>,
    dead_letters: DeadLetterHandle,
    workflows: &WorkflowsConfig,
    artifacts: &ArtifactAgents,
) -> Vec<Arc<dyn Agent>> {
    let host = github
        .clone()
        .map(|g| g as Arc<dyn switchyard_github::GitHost>);
    let contracts = &artifacts.contracts;
    let spec = SpecAgent::new(Arc::clone(contracts));
    // Agents that take action items as events: those that subscribe to them.
    let adaptive = [spec.manifest()]
        .into_iter()
        .filter(|m| {
            m.subscribes
                .iter()
                .any(|t| t.as_str() == "agent.action_item.assigned.v1")
        })
        .map(|m| m.name.clone())
        .collect();
    let mut agents: Vec<Arc<dyn Agent>> = vec![
        Arc::new(Retrospective::new(
            Arc::clone(contracts),
            artifacts.retrospectives.clone(),
            adaptive,
        )),
        Arc::new(spec),
        Arc::new(StrategyAgent::new(Arc::clone(contracts))),
        Arc::new(CoachAgent::new(
            Arc::clone(contracts),
            artifacts.stale_after,
        )),
        Arc::new(GitAgent::new(Arc::new(switchyard_github::LocalGit), host)),
        Arc::new(GitHubAgent::new(github, dead_letters)),
        Arc::new(Orchestrator::new(OrchestratorConfig {
            retry_backoff: std::time::Duration::from_millis(workflows.retry_backoff_ms),
            silence_grace: std::time::Duration::from_secs(workflows.silence_grace_secs),
        })),
    ];
    for runner in runners(workflows) {
        agents.push(Arc::new(runner));
    }
    agents
}
