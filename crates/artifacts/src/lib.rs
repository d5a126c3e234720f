//! Artifacts: the files agents produce for each other (`milestones.md`, a daily checklist, a
//! retrospective), their contracts, and the registry of their versions and readers.
//!
//! - [`Contracts`]: `config/artifacts.yaml`, per-workspace overrides, and the check against
//!   the agents' manifests;
//! - [`publish`] and [`consume`]: how an agent writes a version (`artifact.updated.v1` on
//!   stream `artifact/<name>`, only when the content changed) and records that it read one
//!   (`artifact.consumed.v1`);
//! - [`ArtifactsProjection`] and [`registry`]: versions, readers and staleness, for the API.

mod contracts;
mod publish;
pub mod registry;

pub use contracts::{
    AgentArtifacts, Contract, ContractErrors, Contracts, DEFAULT_YAML, Override, PEOPLE,
};
pub use publish::{Version, consume, contracts_for, latest, publish, stream};
pub use registry::ArtifactsProjection;
