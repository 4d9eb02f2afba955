//! Error text from the store's dependencies made fit to show a user.
//!
//! Lance (and errors it wraps from DataFusion and object_store) appends the Rust source
//! location that raised an error, e.g. `Invalid user input: …, /root/.cargo/registry/src/…/
//! lance-datafusion-14.0.2/src/planner.rs:712:21`. Such paths say nothing to a user and leak
//! the build machine's layout, so every message that leaves the store (and the CLI's final
//! rendering) goes through [`without_source_locations`]. The rest of the text is kept.

/// `text` without Rust source locations (`path/file.rs:LINE:COL`, optionally introduced by
/// `, `, `location: ` or `at `), each line on its own. Text without them is returned as is.
pub fn without_source_locations(text: &str) -> String {
    text.split('\n')
        .map(strip_line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// An error and its causes on one line, `outer: cause: …`, leaving out a cause whose text the
/// line already holds (many errors print their source in their own message), each cause
/// [`without_source_locations`]. What `{e:#}` prints, fit to show a user.
///
/// A cause's lines after its first (`hint: …`) go after the whole chain's first line, so
/// that hints end the message whatever cause gave them.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut after = String::new();
    for cause in e.chain() {
        let text = without_source_locations(&cause.to_string());
        if text.is_empty() || line.contains(&text) || after.contains(&text) {
            continue;
        }
        let (first, rest) = match text.split_once('\n') {
            Some((first, rest)) => (first, Some(rest)),
            None => (text.as_str(), None),
        };
        if !first.is_empty() && !line.contains(first) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(first);
        }
        if let Some(rest) = rest.filter(|r| !after.contains(*r)) {
            after.push('\n');
            after.push_str(rest);
        }
    }
    if line.is_empty() {
        line = "unknown error".into();
    }
    line + &after
}

fn strip_line(line: &str) -> String {
    let mut out = line.to_string();
    // Each pass removes the first location found; a line holds a handful at most.
    while let Some((start, end)) = find_location(&out) {
        let before = trim_introducer(&out[..start]);
        let after = &out[end..];
        let joined = format!("{before}{after}");
        if joined.len() >= out.len() {
            break;
        }
        out = joined;
    }
    out
}

/// Byte range of the first `…file.rs:N:M` token in `s`.
fn find_location(s: &str) -> Option<(usize, usize)> {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(pos) = s[from..].find(".rs:") {
        let dot = from + pos;
        let mut i = dot + 4;
        let line_digits = count_digits(&bytes[i..]);
        i += line_digits;
        let ok = line_digits > 0 && bytes.get(i) == Some(&b':') && {
            let col_digits = count_digits(&bytes[i + 1..]);
            i += 1 + col_digits;
            col_digits > 0
        };
        if ok && dot > 0 {
            // The character after the token's opening one, whatever its width in UTF-8
            // (a no-break space is two bytes).
            let start = s[..dot]
                .char_indices()
                .rev()
                .find(|&(_, c)| c.is_whitespace() || matches!(c, '(' | '"' | '\'' | '`' | '['))
                .map(|(p, c)| p + c.len_utf8())
                .unwrap_or(0);
            if start < dot {
                return Some((start, i));
            }
        }
        from = dot + 4;
    }
    None
}

fn count_digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// `s` without a trailing `, ` / `location: ` / ` at ` that introduced a location.
fn trim_introducer(s: &str) -> &str {
    let mut t = s.trim_end();
    for intro in ["location:", " at", ","] {
        if let Some(rest) = t.strip_suffix(intro) {
            t = rest.trim_end();
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::without_source_locations as strip;

    #[test]
    fn locations_in_lance_messages_are_removed() {
        assert_eq!(
            strip("Invalid user input: LIKE with ESCAPE is not supported, /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/lance-datafusion-14.0.2/src/planner.rs:712:21"),
            "Invalid user input: LIKE with ESCAPE is not supported"
        );
        assert_eq!(
            strip("Append with different schema: x, location: lance/src/dataset.rs:12:3"),
            "Append with different schema: x"
        );
        // Two locations (a wrapped error), and text after one of them.
        assert_eq!(
            strip("Wrapped error: Not found: t, /a/b/c.rs:1:2, /d/e.rs:30:4 (table 'pairs')"),
            "Wrapped error: Not found: t (table 'pairs')"
        );
        assert_eq!(
            strip("panicked at src/cli/sql.rs:10:5: boom"),
            "panicked: boom"
        );
        // Each line on its own; hints survive.
        assert_eq!(
            strip("table 'items': IO: x, /r/f.rs:9:9\nhint: check the path"),
            "table 'items': IO: x\nhint: check the path"
        );
    }

    #[test]
    fn an_error_chain_is_one_line_without_locations_or_repeats() {
        // A store error whose message already holds its cause's text (stripped), over a
        // cause that carries a location: what a failed stage used to print with `{e:#}`.
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "table 'prompts': {}", strip(&self.0.to_string()))
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::other(
            "IO: No space left on device, /root/.cargo/registry/src/i/lance-file-14.0.2/src/writer/structural.rs:190:9",
        );
        let e = anyhow::Error::new(Outer(io)).context("writing the stage's rows");
        assert_eq!(
            super::error_chain(&e),
            "writing the stage's rows: table 'prompts': IO: No space left on device"
        );
        assert!(format!("{e:#}").contains("structural.rs:190:9"));
        // A hint of an inner cause ends the message.
        let inner = anyhow::anyhow!("no store at 's3://b/p'\nhint: run a pipeline");
        let e = inner.context("opening the store");
        assert_eq!(
            super::error_chain(&e),
            "opening the store: no store at 's3://b/p'\nhint: run a pipeline"
        );
    }

    /// A location after a space that is more than one byte in UTF-8 (a no-break space, an
    /// ideographic space) is cut at the character's end, not inside it.
    #[test]
    fn a_location_after_a_wide_space_is_removed() {
        assert_eq!(
            strip("bad file 'a\u{a0}b'\u{a0}src/x.rs:1:2"),
            "bad file 'a\u{a0}b'"
        );
        assert_eq!(
            strip("failed\u{3000}lance/src/io.rs:10:4 now"),
            "failed now"
        );
    }

    #[test]
    fn text_without_locations_is_unchanged() {
        for s in [
            "no store at '/tmp/typo'",
            "file 'data/x.rs' line 3",
            "ratio 1.rs:2 is odd",
            "version.rs:12:x",
            "",
        ] {
            assert_eq!(strip(s), s);
        }
    }
}
