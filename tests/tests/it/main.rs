//! reaper's integration tests, one binary: each module is one area (run one
//! with `cargo test -p reaper-tests --test it report::`). They share one
//! harness, the `reaper_tests` crate (tests/src): `reaper()` runs the binary,
//! `show()` prints a finished run, the fixtures make the children, servers,
//! namespaces, journals and daemons the tests need.
//!
//! Not here, each in a binary of its own beside this one (cargo runs test
//! binaries one at a time): the storms (tests/tests/storm.rs, bpf_storm.rs,
//! daemon_storm.rs), whose host-wide binds would starve other tests'
//! watchers, and accept_backoff.rs, which lowers the process's RLIMIT_NOFILE.
//! A new file at tests/tests/NAME.rs is its own binary too (autotests stay
//! on): move it here as a module when it can share the process.

mod action;
mod bpf;
mod cli_output;
mod client_ports;
mod containers;
mod daemon;
mod daemon_faults;
mod escape;
mod faults;
mod free;
mod holders;
mod job;
mod least_privilege;
mod monitoring;
mod packaging;
mod pidns;
mod report;
mod report_rotation;
mod ship;
mod signals;
mod systemd;
mod users;
mod why;
