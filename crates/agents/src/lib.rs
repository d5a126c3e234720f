//! Switchyard's built-in agents, one module each. Each is an ordinary
//! [`Agent`](switchyard_agent_runtime::Agent): a manifest and a handler, with no privileges
//! beyond what its manifest declares.

mod git;
mod github;
mod orchestrator;
mod retrospective;
mod runner;
mod spec;

use std::sync::Arc;

use switchyard_agent_runtime::Agent;

pub use git::GitAgent;
pub use github::{CI_FIXER_ROLE, DeadLetterHandle, DeadLetters, GitHubAgent};
pub use orchestrator::{Orchestrator, OrchestratorConfig, time_out_silent_runs, watch_deadlines};
pub use retrospective::Retrospective;
pub use runner::{Limits, RoleConfig, RunnerAgent, WorkflowsConfig, runners};
pub use spec::SpecAgent;

/// Every built-in agent, as the server runs them; `github` is the GitHub client when the
/// server has a token, `dead_letters` where the runtime's retry is plugged in once it runs,
/// `workflows` the orchestrator's timing and the runner roles (one runner agent each).
pub fn builtin(
    github: Option<Arc<switchyard_github::GitHubHost>>,
    dead_letters: DeadLetterHandle,
    workflows: &WorkflowsConfig,
) -> Vec<Arc<dyn Agent>> {
    let host = github
        .clone()
        .map(|g| g as Arc<dyn switchyard_github::GitHost>);
    let mut agents: Vec<Arc<dyn Agent>> = vec![
        Arc::new(Retrospective::new()),
        Arc::new(SpecAgent::new()),
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
