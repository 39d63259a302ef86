//! journal -> **report**.
//!
//! Forensics from one or more journals: Markdown for a PR comment, one
//! self-contained HTML file with a timeline per port, or versioned JSON.
