//! Integration tests live in tests/tests/*.rs; helpers here.
pub mod daemon;
