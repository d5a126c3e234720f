//! Switchyard's built-in agents, one module each. Each is an ordinary
//! [`Agent`](switchyard_agent_runtime::Agent): a manifest and a handler, with no privileges
//! beyond what its manifest declares.

mod git;
mod github;
mod retrospective;
mod spec;

use std::sync::Arc;

use switchyard_agent_runtime::Agent;

pub use git::GitAgent;
pub use github::{CI_FIXER_ROLE, DeadLetterHandle, DeadLetters, GitHubAgent};
pub use retrospective::Retrospective;
pub use spec::SpecAgent;

/// Every built-in agent, as the server runs them; `github` is the GitHub client when the
/// server has a token, `dead_letters` where the runtime's retry is plugged in once it runs.
pub fn builtin(
    github: Option<Arc<switchyard_github::GitHubHost>>,
    dead_letters: DeadLetterHandle,
) -> Vec<Arc<dyn Agent>> {
    let host = github
        .clone()
        .map(|g| g as Arc<dyn switchyard_github::GitHost>);
    vec![
        Arc::new(Retrospective::new()),
        Arc::new(SpecAgent::new()),
        Arc::new(GitAgent::new(Arc::new(switchyard_github::LocalGit), host)),
        Arc::new(GitHubAgent::new(github, dead_letters)),
    ]
}
