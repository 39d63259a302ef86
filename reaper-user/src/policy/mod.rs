//! conflict -> **policy** -> reap.
//!
//! Rules a user writes (TOML or flags) and the verdict they give on a holder,
//! with its reasons in plain words. Protections (pid 1, reaper itself, the
//! caller and its ancestors, kernel threads, other namespaces, `protect`
//! rules) hold whatever the rules say.
