//! How reaper prints: logging on stderr, colour only on a terminal (and never
//! with `NO_COLOR`), aligned tables (in display columns), one JSON object a
//! line. Text a process chose is escaped before it gets here (`crate::text`).

use std::io::{IsTerminal, Write};

/// `--color`: whether to colour stdout.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Sets up `tracing` on stderr; `-v` is debug, `-vv` trace. `RUST_LOG`
/// overrides. aya-log records from the BPF side arrive through `log`.
pub fn init_logging_with(verbose: u8, json: bool) {
    init_logging_from("warn", verbose, json);
}

/// The daemon logs what it does (start, tier, conflicts, reapings) at info:
/// its log is read by people who were not watching.
pub fn init_daemon_logging(verbose: u8, json: bool) {
    init_logging_from("info", verbose, json);
}

fn init_logging_from(base: &str, verbose: u8, json: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => base,
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},aya=warn,aya_obj=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.with_target(false).try_init()
    };
}

/// Whether to colour stdout.
pub fn use_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stdout().is_terminal()
        }
    }
}

/// ANSI styles, or nothing when colour is off.
#[derive(Clone, Copy)]
pub struct Style {
    pub on: bool,
}

impl Style {
    pub fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
    pub fn red(&self, s: &str) -> String {
        self.wrap("31", s)
    }
    pub fn green(&self, s: &str) -> String {
        self.wrap("32", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.wrap("33", s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.wrap("2", s)
    }
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// A table whose columns align on the visible width of each cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// Renders with two spaces between columns; the last column is not padded.
    pub fn render(&self, style: Style) -> String {
        let n = self.header.len();
        let mut width = vec![0usize; n];
        for row in std::iter::once(&self.header).chain(self.rows.iter()) {
            for (i, cell) in row.iter().enumerate().take(n) {
                width[i] = width[i].max(visible_width(cell));
            }
        }
        let mut out = String::new();
        let line = |cells: &[String], out: &mut String, header: bool| {
            for (i, cell) in cells.iter().enumerate().take(n) {
                let text = if header {
                    style.bold(cell)
                } else {
                    cell.clone()
                };
                out.push_str(&text);
                if i + 1 < n {
                    let pad = width[i] - visible_width(cell) + 2;
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            while out.ends_with(' ') {
                out.pop();
            }
            out.push('\n');
        };
        line(&self.header, &mut out, true);
        for row in &self.rows {
            line(row, &mut out, false);
        }
        out
    }
}

/// Width of a cell on a terminal in columns (wide CJK and emoji count two),
/// skipping reaper's own colour sequences. Cells that quote what a process
/// chose are escaped by the caller (`crate::text::term`).
pub fn visible_width(s: &str) -> usize {
    crate::text::width(s)
}

/// Writes one JSON value as a line and flushes, so a reader of a pipe sees
/// each record as it happens. A closed pipe ends the program quietly.
pub fn json_line<T: serde::Serialize>(value: &T) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Prints text to stdout; a closed pipe (e.g. `| head`) is not an error.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_on_visible_width() {
        let mut t = Table::new(&["PORT", "PID", "COMM"]);
        t.row(vec![
            "8080".into(),
            "\x1b[31m12\x1b[0m".into(),
            "platform-serve".into(),
        ]);
        t.row(vec!["53".into(), "1234567".into(), "dns".into()]);
        let s = t.render(Style { on: false });
        assert_eq!(
            s,
            "PORT  PID      COMM\n8080  \x1b[31m12\x1b[0m       platform-serve\n53    1234567  dns\n"
        );
    }

    #[test]
    fn table_aligns_wide_names_in_display_columns() {
        let mut t = Table::new(&["COMM", "PID"]);
        t.row(vec!["服务器".into(), "1".into()]);
        t.row(vec!["🦀".into(), "2".into()]);
        t.row(vec!["srv".into(), "3".into()]);
        let s = t.render(Style { on: false });
        assert_eq!(s, "COMM    PID\n服务器  1\n🦀      2\nsrv     3\n");
    }
}
