//! Switchyard's built-in agents, one module each. Each is an ordinary
//! [`Agent`](switchyard_agent_runtime::Agent): a manifest and a handler, with no privileges
//! beyond what its manifest declares.

mod git;
mod retrospective;
mod spec;

use std::sync::Arc;

use switchyard_agent_runtime::Agent;

pub use git::GitAgent;
pub use retrospective::Retrospective;
pub use spec::SpecAgent;

/// Every built-in agent, as the server runs them; `github` is the GitHub host when the server
/// has a token.
pub fn builtin(github: Option<Arc<dyn switchyard_github::GitHost>>) -> Vec<Arc<dyn Agent>> {
    vec![
        Arc::new(Retrospective::new()),
        Arc::new(SpecAgent::new()),
        Arc::new(GitAgent::new(Arc::new(switchyard_github::LocalGit), github)),
    ]
}
