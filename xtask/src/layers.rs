//! The layer order of reaper-user's library modules, and the check that
//! every `crate::` path follows it (`cargo xtask test` runs it first).
//!
//! A module may use modules of lower layers only: not its own layer's other
//! modules, not a higher layer. The order is written here, once:

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Lowest first. The words and the system at the bottom, the journal's
/// schema over them, holders that only read, the policy that judges, reap
/// that acts, the conflict and ledger that feed it, then what runs them.
pub const LAYERS: &[(&str, &[&str])] = &[
    // The raw syscalls, each behind a safe function: the only `unsafe`.
    ("sys", &["sys"]),
    // The /proc readers: every path under /proc is read here.
    ("proc", &["proc"]),
    // The words every layer shares, clocks and parsing, escaping, typed
    // errors, counters, user names.
    (
        "vocabulary, util",
        &["vocab", "util", "text", "error", "progress", "users"],
    ),
    // The journal's record schema; beside it the other leaves over the
    // bottom: terminal output, capabilities, the kernel hooks and the
    // decoding of their events.
    ("journal", &["journal", "output", "caps", "hooks", "events"]),
    // Who holds a socket: sock_diag, /proc, the engine, read only.
    ("holders", &["holders"]),
    // The verdict over a holder; the bind model over holders' facts.
    ("policy", &["policy", "bindmodel"]),
    // Every action: signals, container stops, bind probes, their records.
    ("reap", &["reap"]),
    // Claims as the kernel hooks see them; failed binds in bursts.
    ("conflict/ledger", &["conflict", "ledger"]),
    // What serves them: the control socket, metrics, the report of a
    // journal.
    ("interfaces", &["control", "metrics", "report"]),
    // A CI job's start and end: a scan of its own, or the daemon's claims
    // asked through the control socket.
    ("job", &["job"]),
    // The daemon runs everything. (The commands live in the binary, which
    // may use the whole library.)
    ("daemon", &["daemon"]),
];

/// The binary's files (main.rs, cli.rs, commands/): they may use everything.
const BINARY: &[&str] = &["main", "cli", "commands"];

/// One import against the order.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: String,
    pub line: usize,
    pub module: String,
    pub import: String,
    pub rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: `{}` imports `crate::{}`: {}",
            self.file, self.line, self.module, self.import, self.rule
        )
    }
}

/// The layer of a top-level module; None for one the order does not name.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The top-level module a file of `src/` belongs to (`holders/mod.rs` and
/// `holders/job.rs` are `holders`, `vocab.rs` is `vocab`).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_string())
}

/// The code a file is judged on: its comments and its test modules left
/// out (a test may reach up for a fixture; a doc link is no import).
fn code_lines(src: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut lines = src.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            let next = lines.peek().map(|(_, l)| l.trim_start()).unwrap_or("");
            if next.starts_with("mod ") || next.starts_with("pub mod ") {
                if next.trim_end().ends_with(';') {
                    lines.next();
                    continue;
                }
                // An inline test module: the rest of the file.
                break;
            }
        }
        if t.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push((i + 1, code));
    }
    out
}

/// The top-level modules a line names through `crate::`: `crate::x::...`
/// and the groups of `use crate::{x, y::z}`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        // Not `reaper_crate::` or the like.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group[..end].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(first_ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            out.extend(first_ident(&group[start..end]));
        } else {
            out.extend(first_ident(rest));
        }
    }
    out
}

fn first_ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_string())
}

/// The violations in one file; `rel` is its path under `src/`.
pub fn check_source(rel: &Path, shown: &str, src: &str) -> Vec<Violation> {
    let Some(module) = module_of(rel) else {
        return Vec::new();
    };
    if BINARY.contains(&module.as_str()) || module == "lib" {
        return Vec::new();
    }
    if rel.file_stem().and_then(|s| s.to_str()) == Some("tests") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let here = layer_of(&module);
    for (line, code) in code_lines(src) {
        for import in crate_paths(code) {
            if import == module || import == "self" || import == "super" {
                continue;
            }
            let rule = match (here, layer_of(&import)) {
                (None, _) => format!(
                    "`{module}` has no place in the layer order: add it to LAYERS in xtask/src/layers.rs"
                ),
                (_, None) => format!(
                    "`{import}` has no place in the layer order: add it to LAYERS in xtask/src/layers.rs"
                ),
                (Some(h), Some(t)) if t < h => continue,
                (Some(h), Some(t)) if t == h => format!(
                    "both are in the layer \"{}\", whose modules do not use each other (order: {})",
                    LAYERS[h].0,
                    order()
                ),
                (Some(h), Some(t)) => format!(
                    "the layer \"{}\" may use only layers below it, and \"{}\" is above (order: {})",
                    LAYERS[h].0,
                    LAYERS[t].0,
                    order()
                ),
            };
            out.push(Violation {
                file: shown.to_string(),
                line,
                module: module.clone(),
                import,
                rule,
            });
        }
    }
    out
}

/// The order in one line, lowest first.
fn order() -> String {
    LAYERS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(" <- ")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Checks every file of reaper-user/src; Err lists each violation.
pub fn check(root: &Path) -> Result<()> {
    let src = root.join("reaper-user").join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    files.sort();
    let mut violations = Vec::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let rel = f.strip_prefix(&src).unwrap_or(f);
        let shown = f.strip_prefix(root).unwrap_or(f).display().to_string();
        violations.extend(check_source(rel, &shown, &text));
    }
    if violations.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
    bail!(
        "{} import(s) against the layer order of reaper-user (xtask/src/layers.rs):\n{}\nMove the thing used down a layer, or the code that uses it up.",
        violations.len(),
        list.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_one(rel: &str, src: &str) -> Vec<Violation> {
        check_source(Path::new(rel), &format!("reaper-user/src/{rel}"), src)
    }

    #[test]
    fn an_import_up_the_order_is_caught_with_file_import_and_rule() {
        let v = check_one(
            "journal/mod.rs",
            "use crate::vocab::Proto;\nuse crate::holders::Process;\n",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        let shown = v[0].to_string();
        assert!(
            shown.contains("reaper-user/src/journal/mod.rs:2"),
            "{shown}"
        );
        assert!(shown.contains("crate::holders"), "{shown}");
        assert!(
            shown.contains("may use only layers below it") && shown.contains("holders"),
            "{shown}"
        );
    }

    #[test]
    fn grouped_and_inline_paths_count_and_the_same_layer_is_refused() {
        let v = check_one(
            "ledger/mod.rs",
            "use crate::{util::rfc3339, conflict::Burst};\nfn f() { crate::daemon::run(); }\n",
        );
        let imports: Vec<&str> = v.iter().map(|v| v.import.as_str()).collect();
        assert_eq!(imports, ["conflict", "daemon"], "{v:?}");
        assert!(v[0].rule.contains("do not use each other"), "{}", v[0]);
    }

    #[test]
    fn downward_imports_comments_tests_and_the_binary_pass() {
        assert!(check_one(
            "reap/plan.rs",
            "use crate::holders::Holding;\n// see crate::daemon\n#[cfg(test)]\nmod tests {\n    use crate::daemon;\n}\n",
        )
        .is_empty());
        assert!(check_one("commands/free.rs", "use crate::cli::FreeArgs;\n").is_empty());
        assert!(check_one("policy/tests.rs", "use crate::reap::Plan;\n").is_empty());
    }

    #[test]
    fn a_module_the_order_does_not_name_is_reported() {
        let v = check_one("newthing.rs", "use crate::vocab::Proto;\n");
        assert_eq!(v.len(), 1);
        assert!(v[0].rule.contains("add it to LAYERS"), "{}", v[0]);
    }

    #[test]
    fn the_tree_follows_the_order() {
        check(&crate::root()).unwrap();
    }
}
