//! Text a process controls, made safe to show. Sits at the very end of the
//! flow (holders / journal -> **text** -> who, ports, watch, report, errors).
//!
//! A process chooses its comm, argv, exe path, cgroup and container names.
//! Printed raw, any local user could make root's terminal clear the screen,
//! set its title, write the clipboard (OSC 52) or reorder what it shows
//! (bidi overrides) just by naming a process. So every human output passes
//! such text through [`term`] (or [`shell_word`], [`md_text`], [`md_code`]),
//! which shows the dangerous characters visibly (`\x1b`, `\u{202e}`) and
//! keeps ordinary Unicode as it is. JSON output does not come here: serde
//! escapes control characters and keeps the exact text.
//!
//! Table columns are measured with [`width`], in terminal columns
//! (unicode-width), so wide CJK and emoji names do not shift the table.
//!
//! A backslash is left as it is in [`term`] (regexes and paths in messages
//! read as typed), so a name that spells `\x1b` looks like one that holds
//! ESC; both are harmless to the terminal. [`shell_word`] is exact.

use std::borrow::Cow;
use std::fmt::Write;

use unicode_width::UnicodeWidthChar;

/// Characters that never reach a terminal raw: C0 controls (tab and newline
/// included: they would forge columns and lines), DEL, C1 controls (U+0080
/// to U+009F, among them the 8-bit CSI U+009B and OSC U+009D), the Unicode
/// bidi marks, embeddings, overrides and isolates, and the line and
/// paragraph separators.
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// `s` with every [`is_unsafe`] character shown visibly: `\n`, `\t`, `\r`,
/// `\x1b` for the other ASCII controls, `\u{9b}` / `\u{202e}` for the rest.
/// Borrows when there is nothing to escape (the common case).
pub fn term(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            push_visible(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn push_visible(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// One argument as a shell reads it back, safe on a terminal: plain words as
/// they are, others in single quotes, and words holding an [`is_unsafe`]
/// character in bash's `$'...'` with `\e`-style escapes (`\x1b`, `\u202e`),
/// so a copied command line runs with the same bytes.
pub fn shell_word(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c))
    {
        return a.to_string();
    }
    if !a.chars().any(is_unsafe) {
        return format!("'{}'", a.replace('\'', r"'\''"));
    }
    let mut out = String::from("$'");
    for c in a.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if is_unsafe(c) && (c as u32) < 0x80 => push_visible(&mut out, c),
            // bash's \u takes up to four hex digits: always give four.
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Display width in terminal columns: wide CJK and emoji count two,
/// combining marks none. reaper's own colour sequences (`ESC [ ... m`) take
/// no room; any other control character counts as the escape [`term`] would
/// print, so a cell measured before escaping is not under-counted.
pub fn width(s: &str) -> usize {
    let mut w = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if is_unsafe(c) {
            let mut v = String::new();
            push_visible(&mut v, c);
            w += v.len();
        } else {
            w += c.width().unwrap_or(0);
        }
    }
    w
}

/// Text for Markdown outside code spans: [`term`], then every character
/// Markdown (GitHub's) could read as markup, a link, an entity or a table
/// cell edge backslash-escaped. Newlines are already `\n`, so a line cannot
/// end and nothing else can start one.
pub fn md_text(s: &str) -> String {
    let t = term(s);
    let mut out = String::with_capacity(t.len() + 8);
    for (i, c) in t.char_indices() {
        let markup = match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '&' => true,
            // A heading where a line starts, or a heading's closing run
            // (which GitHub strips) at the end: elsewhere `#` is text.
            '#' => i == 0 || t[i..].trim_end().chars().all(|c| c == '#'),
            _ => false,
        };
        if markup {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A Markdown code span of [`term`]`(s)` that survives backticks in the text:
/// fenced by one more backtick than the longest run inside, padded with a
/// space when the text starts or ends with one. Pipes are left to the table
/// cell (GitHub splits cells on them even inside code spans).
pub fn md_code(s: &str) -> String {
    let t = term(s);
    let mut longest = 0;
    let mut run = 0;
    for c in t.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    if t.is_empty() {
        return "` `".to_string();
    }
    let pad = if t.starts_with('`') || t.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{t}{pad}{fence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No byte a terminal acts on: C0, DEL, C1, bidi controls.
    fn inert(s: &str) -> bool {
        !s.chars().any(is_unsafe)
    }

    #[test]
    fn osc52_clipboard_write_is_shown_not_sent() {
        let evil = "srv\x1b]52;c;cm0gLXJmIH4K\x07";
        let t = term(evil);
        assert_eq!(t, "srv\\x1b]52;c;cm0gLXJmIH4K\\x07");
        assert!(inert(&t));
    }

    #[test]
    fn csi_clear_screen_title_and_bel() {
        assert_eq!(term("\x1b[2J\x1b[H"), "\\x1b[2J\\x1b[H");
        assert_eq!(term("\x1b]0;root@prod\x07"), "\\x1b]0;root@prod\\x07");
        assert_eq!(term("a\x07b\x7f"), "a\\x07b\\x7f");
        assert_eq!(term("a\nb\tc\rd\0"), "a\\nb\\tc\\rd\\x00");
    }

    #[test]
    fn eight_bit_c1_controls() {
        // U+009B is CSI and U+009D OSC on terminals that read C1.
        assert_eq!(term("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(term("\u{9d}52;c;x\u{9c}"), "\\u{9d}52;c;x\\u{9c}");
        assert_eq!(term("\u{80}\u{9f}"), "\\u{80}\\u{9f}");
        assert!(!is_unsafe('\u{a0}'));
    }

    #[test]
    fn bidi_overrides_and_isolates() {
        // "gnp.exe" shown as "exe.png" by a right-to-left override.
        assert_eq!(term("x\u{202e}gnp.exe"), "x\\u{202e}gnp.exe");
        for c in [
            '\u{61c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}',
            '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{2028}', '\u{2029}',
        ] {
            assert!(is_unsafe(c), "{c:?}");
            assert!(inert(&term(&format!("a{c}b"))));
        }
    }

    #[test]
    fn ordinary_text_borrows_and_keeps_unicode() {
        for s in [
            "nginx",
            "café",
            "服务器",
            "🦀 srv",
            "a\\x1b",
            "наборщик",
            "שרת",
        ] {
            assert!(matches!(term(s), Cow::Borrowed(_)), "{s}");
        }
        // The zero-width joiner of an emoji sequence is not a control.
        assert_eq!(term("👩\u{200d}💻"), "👩\u{200d}💻");
    }

    #[test]
    fn widths_in_terminal_columns() {
        assert_eq!(width("nginx"), 5);
        assert_eq!(width("服务器"), 6);
        assert_eq!(width("🦀"), 2);
        assert_eq!(width("e\u{301}"), 1);
        assert_eq!(width("\x1b[1mPID\x1b[0m"), 3);
        // Measured as the escape it will print as.
        assert_eq!(width("a\x07"), width(&term("a\x07")));
        assert_eq!(width("\u{202e}"), "\\u{202e}".len());
    }

    #[test]
    fn shell_words_read_back_and_stay_inert() {
        assert_eq!(shell_word("--port=80"), "--port=80");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("a b\\c"), r"'a b\c'");
        assert_eq!(
            shell_word("x\x1b]52;c;Zm9v\x07'\\"),
            r"$'x\x1b]52;c;Zm9v\x07\'\\'"
        );
        assert_eq!(shell_word("\u{9b}\u{202e}1"), r"$'\u009b\u202e1'");
        assert!(inert(&shell_word("\x1b\u{9b}\u{2066}\n")));
    }

    #[test]
    fn markdown_text_and_code() {
        assert_eq!(md_text("*x* [y](z) a|b"), r"\*x\* \[y\](z) a\|b");
        assert_eq!(md_text("&#x202e; <b>"), r"\&#x202e; \<b\>");
        assert_eq!(md_text("# h conflict #1 ##"), r"\# h conflict #1 \#\#");
        assert_eq!(md_text("a\nb\x1b"), r"a\\nb\\x1b");
        assert_eq!(md_code("srv"), "`srv`");
        assert_eq!(md_code("x`y"), "``x`y``");
        assert_eq!(md_code("``a"), "``` ``a ```");
        assert_eq!(md_code(""), "` `");
        assert_eq!(md_code("a\x1b[2Jb"), "`a\\x1b[2Jb`");
        assert!(inert(&md_code("\u{202e}\n")));
    }
}
