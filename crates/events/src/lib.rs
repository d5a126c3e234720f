//! Switchyard's event vocabulary: the CloudEvents 1.0 envelope, typed identifiers parsed at
//! the edge, and the schema catalog that every event's data is validated against before it may
//! be appended.
//!
//! This crate is pure data, with no IO besides reading run-time schemas at start. It owns one
//! invariant: a [`NewEvent`] that passes [`Catalog::validate`] is well-formed in every
//! attribute and in its data.

mod catalog;
mod envelope;
mod ids;
mod structured;
mod subjects;

pub use catalog::{Catalog, CatalogError, DataError, Origin, Schema, Violation, schema_uri};
pub use envelope::{Cursor, ExpectedVersion, InvalidCursor, JSON, NewEvent, RecordedEvent};
pub use ids::{EventId, EventType, InvalidId, Source, StreamId, Workspace};
pub use structured::{
    BatchError, InvalidEvent, binary_attributes, escape_pointer, is_json_media_type, parse_batch,
    parse_event, parse_expected_version,
};
pub use subjects::{encode_type, subject, type_filter};

/// The CloudEvents SDK types, re-exported for bindings.
pub use cloudevents;
