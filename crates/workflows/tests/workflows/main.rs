//! The workflows crate's tests: the router against its labelled set, and property tests of
//! plan validation and of the orchestrator's decisions (the fuzzing of this crate; `cargo
//! fuzz` needs a nightly toolchain). `PROPTEST_CASES` sets the budget.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod properties;
mod router;
