//! docs/architecture.md walks the code by path and by name. This test keeps
//! the walk true: every path it quotes exists, and every name quoted in the
//! parentheses after a file, `` `file.rs` (`name`, `Type::method`) ``, is
//! defined in that file (or under that folder). It runs with the
//! workspace's tests (`cargo xtask test`), so a rename that leaves the map
//! behind fails there.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    const DOC: &str = "docs/architecture.md";

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask sits in the workspace")
            .to_path_buf()
    }

    /// The text between backticks, in order.
    fn quoted(text: &str) -> Vec<&str> {
        text.split('`').skip(1).step_by(2).collect()
    }

    /// A quoted path: no spaces, a slash, not a Rust path or a command.
    fn is_path(s: &str) -> bool {
        s.contains('/')
            && !s.contains(char::is_whitespace)
            && !s.contains("::")
            && !s.starts_with('/')
            && (s.ends_with('/') || s.rsplit('/').next().is_some_and(|f| f.contains('.')))
    }

    /// Every .rs file at `path` (a file, or a folder walked whole).
    fn sources(path: &Path) -> Vec<PathBuf> {
        if path.is_file() {
            return vec![path.to_path_buf()];
        }
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                out.extend(sources(&p));
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
        out
    }

    /// Whether `name` is defined in `code`: an item, or an enum variant.
    fn defines(code: &str, name: &str) -> bool {
        let items = [
            "fn", "struct", "enum", "trait", "type", "const", "static", "mod",
        ];
        code.lines().any(|line| {
            let t = line.trim_start();
            let item = items.iter().any(|kw| {
                t.split(|c: char| c.is_whitespace() || c == '(' || c == '<' || c == ':')
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w[0] == *kw && w[1] == name)
            });
            let variant = t
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '(', '{', ',']) || rest.is_empty());
            item || variant
        })
    }

    #[test]
    fn every_path_the_architecture_page_quotes_exists() {
        let text = std::fs::read_to_string(root().join(DOC)).expect("docs/architecture.md");
        let missing: Vec<&str> = quoted(&text)
            .into_iter()
            .filter(|s| is_path(s) && !root().join(s).exists())
            .collect();
        assert!(
            missing.is_empty(),
            "{DOC} quotes paths that do not exist: {missing:?}"
        );
    }

    #[test]
    fn every_name_quoted_beside_a_file_is_defined_there() {
        let text = std::fs::read_to_string(root().join(DOC)).expect("docs/architecture.md");
        let mut missing = Vec::new();
        // `path` (`name`, ...): the parentheses right after a quoted path.
        for (at, _) in text.match_indices("` (") {
            let Some(open) = text[..at].rfind('`') else {
                continue;
            };
            let piece = &text[open + 1..at];
            if !is_path(piece) {
                continue;
            }
            let inside = text[at + 3..].split(')').next().unwrap_or_default();
            let code: String = sources(&root().join(piece))
                .iter()
                .filter_map(|f| std::fs::read_to_string(f).ok())
                .collect();
            for name in quoted(inside) {
                let is_name = name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == ':');
                if !is_name || is_path(name) {
                    continue;
                }
                let last = name.rsplit("::").next().unwrap_or(name);
                if !defines(&code, last) {
                    missing.push(format!("{name} in {piece}"));
                }
            }
        }
        missing.sort();
        missing.dedup();
        assert!(
            missing.is_empty(),
            "{DOC} names what its files do not define: {missing:?}"
        );
    }
}
