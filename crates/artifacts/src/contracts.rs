//! Artifact contracts: which artifacts exist, where they live in the repository, who produces
//! and who consumes each, the rules injected into consumers, and how old one may get.
//!
//! The contracts come from `config/artifacts.yaml` (compiled in, or a file the operator names)
//! and may be overridden per workspace (its settings' `artifacts`). [`Contracts::check`]
//! holds them against the agents' manifests; the server refuses to start, and the settings
//! route refuses an override, when they disagree.

use std::{collections::BTreeSet, fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// The compiled-in contracts.
pub const DEFAULT_YAML: &str = include_str!("../../../config/artifacts.yaml");

/// The producer name that stands for people: an artifact maintained by hand in the repository.
pub const PEOPLE: &str = "people";

/// One artifact's contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Its name, e.g. `milestones.md`.
    pub name: String,
    /// Where it lives, relative to the repository root.
    pub path: String,
    /// The agent that produces it, or `people`.
    #[serde(default)]
    pub producer: String,
    /// The agents that read it.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Rules injected into its consumers along with it (e.g. `exclude: vendor/` for the spec
    /// agent's `project_scope.md`).
    #[serde(default)]
    pub rules: Vec<String>,
    /// How old the latest version may be before the artifact is stale, e.g. `1d`, `12h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

impl Contract {
    /// `max_age` as a duration (checked at load, so an unparsable one is `None` only when
    /// absent).
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
            .as_deref()
            .and_then(|a| humantime::parse_duration(a).ok())
    }
}

/// A workspace's change to one contract: the fields it sets replace the base's; a name the
/// base does not have declares a new artifact (then `path` and `producer` are required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// The artifact.
    pub name: String,
    /// See [`Contract::path`].
    #[serde(default)]
    pub path: Option<String>,
    /// See [`Contract::producer`].
    #[serde(default)]
    pub producer: Option<String>,
    /// See [`Contract::consumers`].
    #[serde(default)]
    pub consumers: Option<Vec<String>>,
    /// See [`Contract::rules`].
    #[serde(default)]
    pub rules: Option<Vec<String>>,
    /// See [`Contract::max_age`].
    #[serde(default)]
    pub max_age: Option<String>,
}

/// What an agent's manifest says about artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentArtifacts {
    /// The agent.
    pub agent: String,
    /// Artifacts it produces.
    pub produces: Vec<String>,
    /// Artifacts it consumes.
    pub consumes: Vec<String>,
}

impl From<&switchyard_agent_runtime::Manifest> for AgentArtifacts {
    fn from(m: &switchyard_agent_runtime::Manifest) -> Self {
        Self {
            agent: m.name.clone(),
            produces: m.produces.clone(),
            consumes: m.consumes.clone(),
        }
    }
}

/// Contracts that do not hold: every problem found, each naming the artifact and the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ContractErrors {
    /// Where the contracts came from (a file, or a workspace's settings).
    pub origin: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for ContractErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(p)?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    artifacts: Vec<Contract>,
}

/// Every artifact's contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Contracts {
    artifacts: Vec<Contract>,
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.len() <= 128
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'/' | b'-')
        })
}

fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1024
        && !path.starts_with(['/', '\\'])
        && !path.split(['/', '\\']).any(|part| part == "..")
}

impl Contracts {
    /// Parses YAML (`origin` names it in errors). Checks the contracts' own shape (names,
    /// paths, ages, duplicates), not yet the agents: see [`check`](Self::check).
    pub fn from_yaml(yaml: &str, origin: &str) -> Result<Self, ContractErrors> {
        let file: File = serde_saphyr::from_str(yaml).map_err(|e| ContractErrors {
            origin: origin.to_owned(),
            problems: vec![format!("not valid artifact contracts: {e}")],
        })?;
        let contracts = Self {
            artifacts: file.artifacts,
        };
        contracts.check_shape(origin)?;
        Ok(contracts)
    }

    /// The compiled-in `config/artifacts.yaml`.
    pub fn builtin() -> Result<Self, ContractErrors> {
        Self::from_yaml(DEFAULT_YAML, "config/artifacts.yaml")
    }

    /// All contracts, in declaration order.
    pub fn all(&self) -> &[Contract] {
        &self.artifacts
    }

    /// One artifact's contract.
    pub fn get(&self, name: &str) -> Option<&Contract> {
        self.artifacts.iter().find(|c| c.name == name)
    }

    /// The contracts with a workspace's overrides applied.
    pub fn with_overrides(&self, overrides: &[Override]) -> Self {
        let mut artifacts = self.artifacts.clone();
        for o in overrides {
            let contract = match artifacts.iter_mut().find(|c| c.name == o.name) {
                Some(c) => c,
                None => {
                    artifacts.push(Contract {
                        name: o.name.clone(),
                        path: String::new(),
                        producer: String::new(),
                        consumers: Vec::new(),
                        rules: Vec::new(),
                        max_age: None,
                    });
                    let Some(last) = artifacts.last_mut() else {
                        continue;
                    };
                    last
                }
            };
            if let Some(path) = &o.path {
                contract.path.clone_from(path);
            }
            if let Some(producer) = &o.producer {
                contract.producer.clone_from(producer);
            }
            if let Some(consumers) = &o.consumers {
                contract.consumers.clone_from(consumers);
            }
            if let Some(rules) = &o.rules {
                contract.rules.clone_from(rules);
            }
            if o.max_age.is_some() {
                contract.max_age.clone_from(&o.max_age);
            }
        }
        Self { artifacts }
    }

    fn check_shape(&self, origin: &str) -> Result<(), ContractErrors> {
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for c in &self.artifacts {
            if !valid_name(&c.name) {
                problems.push(format!(
                    "artifact name {:?} is not valid (a-z, 0-9, `_ . / -`, at most 128)",
                    c.name
                ));
            }
            if !seen.insert(c.name.as_str()) {
                problems.push(format!("artifact `{}` is declared twice", c.name));
            }
            if !valid_path(&c.path) {
                problems.push(format!(
                    "artifact `{}` has path {:?}: it must be relative to the repository root, without `..`",
                    c.name, c.path
                ));
            }
            if let Some(age) = &c.max_age
                && humantime::parse_duration(age).is_err()
            {
                problems.push(format!(
                    "artifact `{}` has max_age {age:?}: not a duration (e.g. `1d`, `12h`)",
                    c.name
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ContractErrors {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Holds the contracts against the agents: every artifact has a producer that exists and
    /// says it produces it; every consumer exists; no agent produces or consumes an artifact
    /// the contracts do not declare, or one whose contract does not name it.
    pub fn check(&self, agents: &[AgentArtifacts], origin: &str) -> Result<(), ContractErrors> {
        let mut problems = match self.check_shape(origin) {
            Ok(()) => Vec::new(),
            Err(e) => e.problems,
        };
        let names: Vec<&str> = agents.iter().map(|a| a.agent.as_str()).collect();
        let known = names.join(", ");
        let agent = |name: &str| agents.iter().find(|a| a.agent == name);
        for c in &self.artifacts {
            if c.producer.trim().is_empty() {
                let emitters: Vec<&str> = agents
                    .iter()
                    .filter(|a| a.produces.contains(&c.name))
                    .map(|a| a.agent.as_str())
                    .collect();
                problems.push(match emitters.as_slice() {
                    [] => format!(
                        "artifact `{}` has no producer, and no agent emits it (set `producer:` to an agent or `{PEOPLE}`)",
                        c.name
                    ),
                    _ => format!(
                        "artifact `{}` has no producer (agent `{}` emits it)",
                        c.name,
                        emitters.join("`, `")
                    ),
                });
            } else if c.producer != PEOPLE {
                match agent(&c.producer) {
                    None => problems.push(format!(
                        "artifact `{}` names producer `{}`, which is no agent (agents: {known}; or `{PEOPLE}`)",
                        c.name, c.producer
                    )),
                    Some(a) if !a.produces.contains(&c.name) => problems.push(format!(
                        "artifact `{}` names producer `{}`, whose manifest does not produce it",
                        c.name, c.producer
                    )),
                    Some(_) => {}
                }
            }
            for consumer in &c.consumers {
                if consumer != PEOPLE && agent(consumer).is_none() {
                    problems.push(format!(
                        "artifact `{}` names consumer `{consumer}`, which does not exist (agents: {known})",
                        c.name
                    ));
                }
            }
        }
        for a in agents {
            for name in &a.produces {
                match self.get(name) {
                    None => problems.push(format!(
                        "agent `{}` emits artifact `{name}`, which is not declared",
                        a.agent
                    )),
                    Some(c) if c.producer != a.agent && !c.producer.trim().is_empty() => problems
                        .push(format!(
                            "agent `{}` emits artifact `{name}`, whose declared producer is `{}`",
                            a.agent, c.producer
                        )),
                    Some(_) => {}
                }
            }
            for name in &a.consumes {
                match self.get(name) {
                    None => problems.push(format!(
                        "agent `{}` consumes artifact `{name}`, which is not declared",
                        a.agent
                    )),
                    Some(c) if !c.consumers.contains(&a.agent) => problems.push(format!(
                        "agent `{}` consumes artifact `{name}`, whose consumers do not include it",
                        a.agent
                    )),
                    Some(_) => {}
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ContractErrors {
                origin: origin.to_owned(),
                problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn agents() -> Vec<AgentArtifacts> {
        let a = |agent: &str, produces: &[&str], consumes: &[&str]| AgentArtifacts {
            agent: agent.into(),
            produces: produces.iter().map(|s| s.to_string()).collect(),
            consumes: consumes.iter().map(|s| s.to_string()).collect(),
        };
        vec![
            a("strategy", &["milestones.md"], &[]),
            a("coach", &["daily_checklist.md"], &["milestones.md"]),
        ]
    }

    const GOOD: &str = "
artifacts:
  - name: milestones.md
    path: docs/milestones.md
    producer: strategy
    consumers: [coach]
    max_age: 1d
  - name: daily_checklist.md
    path: docs/daily_checklist.md
    producer: coach
";

    fn refused(yaml: &str) -> String {
        let result = Contracts::from_yaml(yaml, "artifacts.yaml")
            .and_then(|c| c.check(&agents(), "artifacts.yaml"));
        result.unwrap_err().to_string()
    }

    #[test]
    fn good_contracts_pass_and_the_builtin_ones_parse() {
        let contracts = Contracts::from_yaml(GOOD, "t").unwrap();
        contracts.check(&agents(), "t").unwrap();
        assert_eq!(
            contracts.get("milestones.md").unwrap().max_age(),
            Some(Duration::from_secs(86_400))
        );
        assert!(!Contracts::builtin().unwrap().all().is_empty());
    }

    #[test]
    fn each_broken_case_names_the_artifact_and_the_agent() {
        let no_producer = GOOD.replace("    producer: coach\n", "");
        assert_eq!(
            refused(&no_producer),
            "artifacts.yaml: artifact `daily_checklist.md` has no producer (agent `coach` emits it)"
        );
        let ghost_consumer = GOOD.replace("[coach]", "[coach, reviewer]");
        assert_eq!(
            refused(&ghost_consumer),
            "artifacts.yaml: artifact `milestones.md` names consumer `reviewer`, which does not exist (agents: strategy, coach)"
        );
        let ghost_producer = GOOD.replace("producer: strategy", "producer: planner");
        assert!(
            refused(&ghost_producer)
                .contains("artifact `milestones.md` names producer `planner`, which is no agent"),
            "{}",
            refused(&ghost_producer)
        );
        let undeclared = GOOD.replace(
            "  - name: daily_checklist.md\n    path: docs/daily_checklist.md\n    producer: coach\n",
            "",
        );
        assert_eq!(
            refused(&undeclared),
            "artifacts.yaml: agent `coach` emits artifact `daily_checklist.md`, which is not declared"
        );
        let not_a_consumer = GOOD.replace("[coach]", "[]");
        assert_eq!(
            refused(&not_a_consumer),
            "artifacts.yaml: agent `coach` consumes artifact `milestones.md`, whose consumers do not include it"
        );
        assert!(
            refused(&GOOD.replace("docs/milestones.md", "../milestones.md")).contains(
                "artifact `milestones.md` has path \"../milestones.md\": it must be relative"
            )
        );
        assert!(
            refused(&GOOD.replace("1d", "soon"))
                .contains("artifact `milestones.md` has max_age \"soon\": not a duration")
        );
        assert!(refused(&GOOD.replace("consumers:", "readers:")).contains("readers"));
    }

    #[test]
    fn overrides_replace_fields_and_are_checked_too() {
        let base = Contracts::from_yaml(GOOD, "t").unwrap();
        let changed = base.with_overrides(&[Override {
            name: "milestones.md".into(),
            path: Some("plans/milestones.md".into()),
            producer: None,
            consumers: None,
            rules: Some(vec!["no more than 5 milestones".into()]),
            max_age: None,
        }]);
        let m = changed.get("milestones.md").unwrap();
        assert_eq!(
            (m.path.as_str(), m.consumers.len(), m.rules.len()),
            ("plans/milestones.md", 1, 1)
        );
        let broken = base.with_overrides(&[Override {
            name: "milestones.md".into(),
            path: None,
            producer: None,
            consumers: Some(vec!["nobody".into()]),
            rules: None,
            max_age: None,
        }]);
        let e = broken.check(&agents(), "workspace w settings").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "workspace w settings: artifact `milestones.md` names consumer `nobody`"
            ),
            "{e}"
        );
    }
}
